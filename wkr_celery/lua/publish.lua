-- publish.lua: a client publishes its outbox of requests in one round trip and wakes workers.
--
-- Messages are pushed in order onto the queue list each names; with a cap, only as many as fit
-- under it (counting every queue list) are taken, and the rest (the tail) are refused, so the
-- client can fail them at once rather than let them wait. Then `wake_count` wake tokens are
-- pushed and the wake list is trimmed to `wake_cap + 1` tokens.
--
-- Returns the number of messages accepted.
local wake = KEYS[1]
local first_queue = 2            -- KEYS[2..]: the queue lists in serving order

local cap = tonumber(ARGV[1])    -- most messages waiting in all queue lists; 0: no cap
local wake_count = tonumber(ARGV[2])
local wake_cap = tonumber(ARGV[3])
local first_item = 4             -- ARGV[4..]: pairs {queue list index from 0, message}

local room = -1
if cap > 0 then
  local waiting = 0
  for i = first_queue, #KEYS do waiting = waiting + redis.call('LLEN', KEYS[i]) end
  room = cap - waiting
  if room < 0 then room = 0 end
end
local accepted = 0
for j = first_item, #ARGV, 2 do
  if room >= 0 and accepted >= room then break end
  redis.call('LPUSH', KEYS[first_queue + tonumber(ARGV[j])], ARGV[j + 1])
  accepted = accepted + 1
end
if accepted > 0 then
  for _ = 1, wake_count do redis.call('LPUSH', wake, 1) end
  redis.call('LTRIM', wake, 0, wake_cap)
end
return accepted
