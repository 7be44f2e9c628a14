-- needs: lib/keys.lua lib/nudge.lua
-- publish.lua: a client publishes its outbox of requests in one round trip.
--
-- Messages are pushed in order onto the queue list each names; with a cap, only as many as fit
-- under it (counting every queue list) are taken, and the rest (the tail) are refused, so the
-- client can fail them at once rather than let them wait. A message on the arrivals list wakes
-- an idle worker by itself; for the others a nudge is pushed (see lib/nudge.lua).
--
-- The cap is the service's own (its info hash, which each worker writes at start): a client
-- connected before the service was restarted with another -max_queue is held to the new one.
-- The sender's cap counts only while the info is missing (a Redis restarted empty).
--
-- Refusals are counted in the service's totals hash (field "refused"), whoever sent them: the
-- one place an operator sees load shed at the cap, from every client and the REST API alike.
--
-- Returns the number of messages accepted.
local first_queue = 1            -- KEYS[1..n-2]: the queue lists in serving order
local last_queue = #KEYS - 2
local arrivals = KEYS[2]         -- the list idle workers block on (normal priority)
local info = KEYS[#KEYS - 1]     -- the service info hash (wkr:<name>:info)
local totals = KEYS[#KEYS]       -- the service's cumulative figures (wkr:<name>:totals)

-- pcall: an info key someone made another type leaves the sender's cap, not a failed publish
local stored = redis.pcall('HGET', info, 'max_queue')
if type(stored) ~= 'string' then stored = nil end
local cap = tonumber(stored or ARGV[1]) or tonumber(ARGV[1])
local first_item = 2             -- ARGV[1]: the sender's cap (0: none); ARGV[2..]: pairs
                                 -- {queue list index from 0, message}

local room = -1
if cap > 0 then
  local waiting = 0
  for i = first_queue, last_queue do waiting = waiting + on_key('LLEN', KEYS[i]) end
  room = cap - waiting
  if room < 0 then room = 0 end
end
-- One LPUSH per run of messages bound for the same list (all of them, in the common case),
-- in slices: unpack() of more than LUAI_MAXCSTACK (8000) values fails.
local SLICE = 1000
local accepted, run, run_list = 0, {}, nil
local function push_run()
  for i = 1, #run, SLICE do
    on_key('LPUSH', run_list, unpack(run, i, math.min(i + SLICE - 1, #run)))
  end
  run = {}
end
for j = first_item, #ARGV, 2 do
  if room >= 0 and accepted >= room then break end
  local list = KEYS[first_queue + tonumber(ARGV[j])]
  if list ~= run_list and #run > 0 then push_run() end
  run_list = list
  run[#run + 1] = ARGV[j + 1]
  accepted = accepted + 1
end
if #run > 0 then push_run() end
if accepted > 0 then nudge(arrivals) end
local refused = (#ARGV - first_item + 1) / 2 - accepted
-- pcall: a totals key someone spoiled costs the count, never the publish
if refused > 0 then redis.pcall('HINCRBY', totals, 'refused', refused) end
return accepted
