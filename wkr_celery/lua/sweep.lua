-- needs: lib/keys.lua lib/nudge.lua lib/requeue.lua
-- sweep.lua: any supervisor requeues the messages of every registered worker whose heartbeat
-- has expired (its host died, or its supervisor with it), blaming all of them, and removes the
-- worker from the registry.
--
-- Returns a flat list {worker id, messages moved, ...}, one pair per worker swept.
local workers = KEYS[1]
local suspect = KEYS[2]
local deaths = KEYS[3]
local first_queue = 4            -- KEYS[4..]: the queue lists in serving order

local heartbeat_prefix = ARGV[1]
local inflight_prefix = ARGV[2]
local landing_prefix = ARGV[3]
local deaths_ttl = ARGV[4]

local queues = {}
for i = first_queue, #KEYS do queues[#queues + 1] = KEYS[i] end
local swept = {}
for _, worker_id in ipairs(redis.call('SMEMBERS', workers)) do
  if redis.call('EXISTS', heartbeat_prefix .. worker_id) == 0 then
    local moved = requeue(inflight_prefix .. worker_id, landing_prefix .. worker_id, suspect,
                          deaths, queues, true, {}, deaths_ttl)
    redis.call('SREM', workers, worker_id)
    swept[#swept + 1] = worker_id
    swept[#swept + 1] = moved
  end
end
return swept
