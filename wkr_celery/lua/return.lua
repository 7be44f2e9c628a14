-- needs: lib/keys.lua lib/nudge.lua
-- return.lua: a stopping worker puts messages it has not started back at the head of the lists
-- they came from (graceful stop); the source is the inflight id modulo 8 (see fetch.lua). A
-- message it landed (took with BLMOVE into its landing list, see lib/requeue.lua) goes back by
-- value to the head of the arrivals list.
--
-- Returns the number of messages put back.
local inflight = KEYS[1]
local landing = KEYS[2]
local suspect = KEYS[3]
local first_queue = 4            -- KEYS[4..]: the queue lists in serving order
local arrivals = KEYS[5]         -- the list idle workers block on (normal priority)

local n_ids = tonumber(ARGV[1])
local first_id = 2               -- ARGV[2..]: the inflight ids, newest first (each RPUSH lands
local first_landed = first_id + n_ids  -- nearer the head than the one before), then landed messages

local returned = 0
for i = first_id, first_landed - 1 do
  local id = ARGV[i]
  local message = redis.call('HGET', inflight, id)
  if message then
    local source = tonumber(id) % 8
    if source == 7 then
      on_key('RPUSH', suspect, message)
    else
      on_key('RPUSH', KEYS[first_queue + source], message)
    end
    redis.call('HDEL', inflight, id)
    returned = returned + 1
  end
end
for i = first_landed, #ARGV do
  if redis.call('LREM', landing, -1, ARGV[i]) > 0 then
    on_key('RPUSH', arrivals, ARGV[i])
    returned = returned + 1
  end
end
if returned > 0 then nudge(arrivals) end
return returned
