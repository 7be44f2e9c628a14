-- return.lua: a stopping worker puts messages it has not started back at the head of the lists
-- they came from (graceful stop); the source is the inflight id modulo 8 (see fetch.lua).
--
-- Returns the number of messages put back.
local inflight = KEYS[1]
local wake = KEYS[2]
local suspect = KEYS[3]
local first_queue = 4            -- KEYS[4..]: the queue lists in serving order
-- ARGV: the inflight ids, newest first (each RPUSH lands nearer the head than the one before)

local returned = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local message = redis.call('HGET', inflight, id)
  if message then
    local source = tonumber(id) % 8
    if source == 7 then
      redis.call('RPUSH', suspect, message)
    else
      redis.call('RPUSH', KEYS[first_queue + source], message)
    end
    redis.call('HDEL', inflight, id)
    returned = returned + 1
  end
end
if returned > 0 then redis.call('LPUSH', wake, 1) end
return returned
