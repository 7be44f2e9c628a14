-- needs: lib/keys.lua
-- write_info.lua: a worker writes the service info (its input contract, -max_queue, version)
-- unless it belongs to an older deploy than the one the info names. Two wkr-serving-starts of
-- one name overlap during a rolling deploy; the info is the newest one's, so a worker of the
-- old version restarted meanwhile does not put the old contract back. A worker of an older
-- deploy writes it only as the one that saw the newer deploy gone (`orphan`: the deploy it
-- found with no live worker), and only if the info still names that deploy.
--
-- The hash is replaced whole: a field the new info lacks (an input shape a version dropped)
-- does not outlive the version that wrote it.
--
-- Returns 1 when written, 0 when a newer deploy's info stands.
local info = KEYS[1]
local services = KEYS[2]

local name = ARGV[1]
local deployed = ARGV[2]
local orphan = ARGV[3]

local current = on_key('HGET', info, 'deployed')
if current and current ~= orphan then
  local theirs, ours = tonumber(current), tonumber(deployed)
  if theirs and ours and theirs > ours then
    return 0
  end
end
redis.call('DEL', info)
for i = 4, #ARGV, 2 do
  redis.call('HSET', info, ARGV[i], ARGV[i + 1])
end
redis.call('SADD', services, name)
return 1
