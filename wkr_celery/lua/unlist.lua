-- needs: lib/keys.lua
-- unlist.lua: a service stopped gracefully (its last worker left, or its supervisor stopped):
-- its name leaves the services set unless a registered worker of it still has a heartbeat
-- (another host serving the same name, or a worker of ours still stopping). Atomic, so of two
-- hosts stopping at once exactly one sees the other gone; a worker that heartbeats later (one
-- that was loading its model) lists the name again, as every heartbeat does.
--
-- Returns 1 when the name was unlisted, 0 when a live worker keeps it.
local services = KEYS[1]
local workers = KEYS[2]

local name = ARGV[1]
local heartbeat_prefix = ARGV[2]

for _, worker_id in ipairs(on_key('SMEMBERS', workers)) do
  if redis.call('EXISTS', heartbeat_prefix .. worker_id) == 1 then
    return 0
  end
end
redis.call('SREM', services, name)
return 1
