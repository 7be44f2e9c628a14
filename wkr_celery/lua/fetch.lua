-- needs: lib/nudge.lua
-- fetch.lua: a worker takes up to `count` messages into its inflight hash, oldest first.
--
-- A message on the suspect list (held by a worker that died) comes alone, with its death count,
-- so a message that kills workers kills at most one more batch: itself. Otherwise messages are
-- popped from the queue lists in serving order; nudges met on the way are dropped (see
-- lib/nudge.lua). Each message gets an inflight id `seq * 8 + source` (source: the queue list's
-- index from 0, 7 for the suspect list) so that return.lua and requeue can put it back where it
-- came from. When work is left, an idle peer is nudged.
--
-- Returns a flat list {id, message, deaths, id, message, deaths, ...}; empty when nothing waits.
local inflight = KEYS[1]
local seq = KEYS[2]
local suspect = KEYS[3]
local deaths = KEYS[4]
local first_queue = 5            -- KEYS[5..]: the queue lists in serving order
local arrivals = KEYS[6]         -- the list idle workers block on (normal priority)

local count = tonumber(ARGV[1])

local message = redis.call('RPOP', suspect)
if message then
  local died = tonumber(redis.call('HGET', deaths, message) or '1')
  local id = redis.call('INCR', seq) * 8 + 7
  redis.call('HSET', inflight, id, message)
  if redis.call('LLEN', suspect) > 0 then nudge(arrivals) end
  return {id, message, died}
end

local got, messages, sources = 0, {}, {}
for i = first_queue, #KEYS do
  if got >= count then break end
  local items = redis.call('RPOP', KEYS[i], count - got)
  while items do
    local dropped = 0
    for _, m in ipairs(items) do
      if m == NUDGE then
        dropped = dropped + 1
      else
        got = got + 1
        messages[got] = m
        sources[got] = i - first_queue
      end
    end
    -- nudges took places in this pop: take as many more from the same list
    if dropped == 0 or got >= count then break end
    items = redis.call('RPOP', KEYS[i], count - got)
  end
end
if got > 0 then
  local last = redis.call('INCRBY', seq, got)
  local fields, result = {}, {}
  for j = 1, got do
    local id = (last - got + j) * 8 + sources[j]
    fields[2 * j - 1] = id
    fields[2 * j] = messages[j]
    result[3 * j - 2] = id
    result[3 * j - 1] = messages[j]
    result[3 * j] = 0
  end
  redis.call('HSET', inflight, unpack(fields))
  if got >= count then
    for i = first_queue, #KEYS do
      if redis.call('LLEN', KEYS[i]) > 0 then
        nudge(arrivals)
        break
      end
    end
  end
  return result
end
return {}
