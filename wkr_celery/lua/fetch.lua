-- needs: lib/keys.lua lib/nudge.lua
-- fetch.lua: a worker takes up to `count` messages into its inflight hash, oldest first.
--
-- A message on the suspect list (held by a worker that died) comes alone, with its death count,
-- so a message that kills workers kills at most one more batch: itself. Otherwise messages are
-- popped from the queue lists in serving order; nudges met on the way are dropped (see
-- lib/nudge.lua). Each message gets an inflight id `seq * 8 + source` (source: the queue list's
-- index from 0, 7 for the suspect list) so that return.lua and requeue can put it back where it
-- came from. When work is left, an idle peer is nudged.
--
-- Ids must never repeat within a worker's life, even across a broker restarted empty: a worker
-- still holds (and later acks, gives back or is blamed for) ids issued before it, and an equal
-- new id would name another message. So a missing `seq` (a new service, or an empty restart)
-- starts from the broker's clock in microseconds since 2024-01-01, above every id issued before
-- unless more than a million messages a second were fetched since the counter last started; and
-- never below `after`, the highest id this worker ever got, which makes it exact for the worker's
-- own hash, the only one its ids name. Ids stay integers far below 2^53 (8 * 36 years of
-- microseconds) where a double is exact; they are written with '%d' (Lua's tostring switches to
-- an exponent past 14 digits).
--
-- Returns a flat list {id, message, deaths, id, message, deaths, ...}; empty when nothing waits.
local inflight = KEYS[1]
local seq = KEYS[2]
local suspect = KEYS[3]
local deaths = KEYS[4]
local first_queue = 5            -- KEYS[5..]: the queue lists in serving order
local arrivals = KEYS[6]         -- the list idle workers block on (normal priority)

local count = tonumber(ARGV[1])
local after = tonumber(ARGV[2] or '0')  -- the highest inflight id this worker ever got

local EPOCH = 1704067200         -- 2024-01-01 00:00 UTC, in seconds

-- The first of `n` new seq numbers, reserved. A `seq` that is not a number (someone else wrote
-- it: text, '1e999', or a key of another type) counts as missing and is overwritten; else every fetch
-- failed here and each worker died on it, for as long as the key stayed.
local function issue(n)
  local current = redis.pcall('GET', seq)
  local base = type(current) == 'string' and tonumber(current) or nil
  if not base or not (base >= 0 and base < 2^50) then  -- ids seq * 8 + source stay exact
    local now = redis.call('TIME')
    base = math.max(0, (tonumber(now[1]) - EPOCH) * 1000000 + tonumber(now[2]))
  end
  base = math.max(base, math.floor(after / 8))
  redis.call('SET', seq, string.format('%d', base + n))
  return base + 1
end

local message = on_key('RPOP', suspect)
if message then
  local died = tonumber(on_key('HGET', deaths, message) or '1')
  local id = issue(1) * 8 + 7
  redis.call('HSET', inflight, string.format('%d', id), message)
  if on_key('LLEN', suspect) > 0 then nudge(arrivals) end
  return {id, message, died}
end

local got, messages, sources = 0, {}, {}
for i = first_queue, #KEYS do
  if got >= count then break end
  local items = on_key('RPOP', KEYS[i], count - got)
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
    items = on_key('RPOP', KEYS[i], count - got)
  end
end
if got > 0 then
  local first = issue(got)
  local fields, result = {}, {}
  for j = 1, got do
    local id = (first + j - 1) * 8 + sources[j]
    fields[2 * j - 1] = string.format('%d', id)
    fields[2 * j] = messages[j]
    result[3 * j - 2] = id
    result[3 * j - 1] = messages[j]
    result[3 * j] = 0
  end
  redis.call('HSET', inflight, unpack(fields))
  if got >= count then
    for i = first_queue, #KEYS do
      if on_key('LLEN', KEYS[i]) > 0 then
        nudge(arrivals)
        break
      end
    end
  end
  return result
end
return {}
