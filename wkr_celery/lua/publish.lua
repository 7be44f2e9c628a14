-- needs: lib/keys.lua lib/nudge.lua
-- publish.lua: a client publishes its outbox of requests in one round trip.
--
-- Messages are pushed in order onto the queue list each names; with a cap, only as many as fit
-- under it (counting every queue list) are taken, and the rest (the tail) are refused, so the
-- client can fail them at once rather than let them wait. A message on the arrivals list wakes
-- an idle worker by itself; for the others a nudge is pushed (see lib/nudge.lua).
--
-- Returns the number of messages accepted.
local first_queue = 1            -- KEYS[1..]: the queue lists in serving order
local arrivals = KEYS[2]         -- the list idle workers block on (normal priority)

local cap = tonumber(ARGV[1])    -- most messages waiting in all queue lists; 0: no cap
local first_item = 2             -- ARGV[2..]: pairs {queue list index from 0, message}

local room = -1
if cap > 0 then
  local waiting = 0
  for i = first_queue, #KEYS do waiting = waiting + on_key('LLEN', KEYS[i]) end
  room = cap - waiting
  if room < 0 then room = 0 end
end
local accepted = 0
for j = first_item, #ARGV, 2 do
  if room >= 0 and accepted >= room then break end
  on_key('LPUSH', KEYS[first_queue + tonumber(ARGV[j])], ARGV[j + 1])
  accepted = accepted + 1
end
if accepted > 0 then nudge(arrivals) end
return accepted
