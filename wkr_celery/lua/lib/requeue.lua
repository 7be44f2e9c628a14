-- requeue(...): moves a dead worker's messages back: its inflight hash and its landing list.
--
-- Shared by requeue_dead.lua and sweep.lua (they say
-- `-- needs: lib/keys.lua lib/nudge.lua lib/requeue.lua`; the loader in wkr_celery/scripts.py
-- puts these files in front of them). Inflight field ids are
-- `seq * 8 + source`: source 0..3 is the queue list a message came from, 7 the suspect list.
-- The landing list holds what the worker took with BLMOVE from the arrivals list while idle
-- (a message it predicts without a fetch.lua call); its id is 6 (see scripts.LANDED_ID).
-- Blamed ids (those in predict when the worker died, or all of them when nobody knows) get a
-- death counted and go to the suspect list, served one at a time; the rest go back to the head of
-- the list they came from, oldest ending nearest the head, landed messages nearest of all.
--
--   inflight    the dead worker's inflight hash (id -> message)
--   landing     the dead worker's landing list
--   suspect     the suspect list
--   deaths      hash: message -> worker deaths it was part of (expires after `ttl` seconds)
--   queues      the queue lists in serving order, indexed by source + 1; queues[2] is arrivals
--   blamed_all  true: every message counts a death
--   blamed      set of blamed ids, as strings
-- Returns the number of messages moved.
local function requeue(inflight, landing, suspect, deaths, queues, blamed_all, blamed, ttl)
  local all = on_key('HGETALL', inflight)
  local ids, byid = {}, {}
  for i = 1, #all, 2 do
    local id = tonumber(all[i])
    if id and id >= 0 and id < 2^53 and id == math.floor(id) then  -- else not a field of ours
      ids[#ids + 1] = id
      byid[id] = all[i + 1]
    end
  end
  table.sort(ids)
  local moved = 0
  local function put_back(message, source, blame)
    if blame then
      on_key('HINCRBY', deaths, message, 1)
      on_key('RPUSH', suspect, message)
    elseif source == 7 then
      on_key('RPUSH', suspect, message)
    else
      on_key('RPUSH', queues[source + 1] or queues[2], message)  -- a source we never write
    end
    moved = moved + 1
  end
  for k = #ids, 1, -1 do
    local id = ids[k]             -- blamed ids are '%d' strings: tostring would print an exponent
    put_back(byid[id], id % 8, blamed_all or blamed[string.format('%d', id)])
  end
  local landed = on_key('LRANGE', landing, 0, -1)
  for k = 1, #landed do           -- LPUSHed: the oldest is last
    if landed[k] ~= NUDGE then put_back(landed[k], 1, blamed_all or blamed['6']) end
  end
  if moved > 0 then
    redis.call('EXPIRE', deaths, ttl)
    nudge(queues[2])
  end
  redis.call('DEL', inflight, landing)
  return moved
end
