-- needs: lib/keys.lua lib/nudge.lua lib/requeue.lua
-- requeue_dead.lua: the supervisor saw one of its worker processes die (or stop): everything
-- that worker held goes back (see lib/requeue.lua), and the worker leaves the registry.
--
-- Returns the number of messages moved.
local inflight = KEYS[1]
local landing = KEYS[2]
local suspect = KEYS[3]
local deaths = KEYS[4]
local workers = KEYS[5]
local heartbeat = KEYS[6]
local first_queue = 7            -- KEYS[7..]: the queue lists in serving order

local worker_id = ARGV[1]
local deaths_ttl = ARGV[2]
local first_blamed = 3           -- ARGV[3..]: '*' (blame all) or the blamed inflight ids

local queues = {}
for i = first_queue, #KEYS do queues[#queues + 1] = KEYS[i] end
local blamed, blamed_all = {}, false
for i = first_blamed, #ARGV do
  if ARGV[i] == '*' then blamed_all = true else blamed[ARGV[i]] = true end
end
local moved = requeue(inflight, landing, suspect, deaths, queues, blamed_all, blamed, deaths_ttl)
redis.call('SREM', workers, worker_id)
redis.call('DEL', heartbeat)
return moved
