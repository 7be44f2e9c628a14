-- requeue(...): moves a dead worker's inflight messages back.
--
-- Shared by requeue_dead.lua and sweep.lua (they say `-- needs: lib/requeue.lua`; the loader in
-- wkr_celery/scripts.py puts this file in front of them). Inflight field ids are
-- `seq * 8 + source`: source 0..3 is the queue list a message came from, 7 the suspect list.
-- Blamed ids (those in predict when the worker died, or all of them when nobody knows) get a
-- death counted and go to the suspect list, served one at a time; the rest go back to the head of
-- the list they came from, oldest ending nearest the head.
--
--   inflight    the dead worker's inflight hash (id -> message)
--   suspect     the suspect list
--   deaths      hash: message -> worker deaths it was part of (expires after `ttl` seconds)
--   wake        the wake list; one token is pushed when anything moved
--   queues      the queue lists in serving order, indexed by source + 1
--   blamed_all  true: every message counts a death
--   blamed      set of blamed ids, as strings
-- Returns the number of messages moved.
local function requeue(inflight, suspect, deaths, wake, queues, blamed_all, blamed, ttl)
  local all = redis.call('HGETALL', inflight)
  local ids, byid = {}, {}
  for i = 1, #all, 2 do
    local id = tonumber(all[i])
    ids[#ids + 1] = id
    byid[id] = all[i + 1]
  end
  table.sort(ids)
  for k = #ids, 1, -1 do
    local id = ids[k]
    local message = byid[id]
    local source = id % 8
    if blamed_all or blamed[tostring(id)] then
      redis.call('HINCRBY', deaths, message, 1)
      redis.call('RPUSH', suspect, message)
    elseif source == 7 then
      redis.call('RPUSH', suspect, message)
    else
      redis.call('RPUSH', queues[source + 1], message)
    end
  end
  if #ids > 0 then
    redis.call('EXPIRE', deaths, ttl)
    redis.call('LPUSH', wake, 1)
  end
  redis.call('DEL', inflight)
  return #ids
end
