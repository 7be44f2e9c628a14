"""Lua scripts that make each broker step one atomic round trip.

Inflight field ids are ``seq * 8 + source``: ``source`` 0..3 is the priority list a message came
from and 7 the suspect list, so a message can be put back where it came from without parsing it.
"""

from __future__ import annotations

__all__ = ["FETCH", "RETURN", "REQUEUE_DEAD", "SWEEP", "PUBLISH", "STORE", "SUSPECT_SOURCE"]

SUSPECT_SOURCE = 7

# Moves a dead worker's inflight messages back. Blamed ids (those in predict when it died, or
# all of them when nobody knows) get a death counted and go to the suspect list, served one at a
# time; the rest go back to the head of the list they came from.
_REQUEUE_FN = """
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
    local m = byid[id]
    local src = id % 8
    if blamed_all or blamed[tostring(id)] then
      redis.call('HINCRBY', deaths, m, 1)
      redis.call('RPUSH', suspect, m)
    elseif src == 7 then
      redis.call('RPUSH', suspect, m)
    else
      redis.call('RPUSH', queues[src + 1], m)
    end
  end
  if #ids > 0 then
    redis.call('EXPIRE', deaths, ttl)
    redis.call('LPUSH', wake, 1)
  end
  redis.call('DEL', inflight)
  return #ids
end
"""

# KEYS: inflight, seq, wake, suspect, deaths, queue lists in serving order
# ARGV: max count, wake cap       -> flat {id, message, deaths, ...}
FETCH = """
local n = tonumber(ARGV[1])
local s = redis.call('RPOP', KEYS[4])
if s then
  local d = tonumber(redis.call('HGET', KEYS[5], s) or '1')
  local id = redis.call('INCR', KEYS[2]) * 8 + 7
  redis.call('HSET', KEYS[1], id, s)
  if redis.call('LLEN', KEYS[4]) > 0 then redis.call('LPUSH', KEYS[3], 1) end
  return {id, s, d}
end
local got, msgs, src = 0, {}, {}
for i = 6, #KEYS do
  if got >= n then break end
  local items = redis.call('RPOP', KEYS[i], n - got)
  if items then
    for _, m in ipairs(items) do
      got = got + 1
      msgs[got] = m
      src[got] = i - 6
    end
  end
end
if got == 0 then return {} end
local last = redis.call('INCRBY', KEYS[2], got)
local fields, res = {}, {}
for j = 1, got do
  local id = (last - got + j) * 8 + src[j]
  fields[2 * j - 1] = id
  fields[2 * j] = msgs[j]
  res[3 * j - 2] = id
  res[3 * j - 1] = msgs[j]
  res[3 * j] = 0
end
redis.call('HSET', KEYS[1], unpack(fields))
if got >= n then
  for i = 6, #KEYS do
    if redis.call('LLEN', KEYS[i]) > 0 then
      redis.call('LPUSH', KEYS[3], 1)
      redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]))
      break
    end
  end
end
return res
"""

# KEYS: inflight, wake, suspect, queue lists     ARGV: ids, newest first
RETURN = """
local n = 0
for i = 1, #ARGV do
  local m = redis.call('HGET', KEYS[1], ARGV[i])
  if m then
    local src = tonumber(ARGV[i]) % 8
    if src == 7 then
      redis.call('RPUSH', KEYS[3], m)
    else
      redis.call('RPUSH', KEYS[4 + src], m)
    end
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
if n > 0 then redis.call('LPUSH', KEYS[2], 1) end
return n
"""

# KEYS: inflight, suspect, deaths, wake, workers, heartbeat, queue lists
# ARGV: worker id, deaths ttl, '*' or blamed ids...
REQUEUE_DEAD = _REQUEUE_FN + """
local queues = {}
for i = 7, #KEYS do queues[#queues + 1] = KEYS[i] end
local blamed, blamed_all = {}, false
for i = 3, #ARGV do
  if ARGV[i] == '*' then blamed_all = true else blamed[ARGV[i]] = true end
end
local n = requeue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], queues, blamed_all, blamed, ARGV[2])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[6])
return n
"""

# KEYS: workers, suspect, deaths, wake, queue lists
# ARGV: heartbeat prefix, inflight prefix, deaths ttl      -> {worker id, requeued, ...}
SWEEP = _REQUEUE_FN + """
local queues = {}
for i = 5, #KEYS do queues[#queues + 1] = KEYS[i] end
local out = {}
for _, wid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. wid) == 0 then
    local n = requeue(ARGV[2] .. wid, KEYS[2], KEYS[3], KEYS[4], queues, true, {}, ARGV[3])
    redis.call('SREM', KEYS[1], wid)
    out[#out + 1] = wid
    out[#out + 1] = n
  end
end
return out
"""

# KEYS: wake, queue lists      ARGV: cap (0 = none), wake count, wake cap, {list index, msg}...
# -> number accepted; those past the cap (the tail) are refused
PUBLISH = """
local cap = tonumber(ARGV[1])
local room = -1
if cap > 0 then
  local total = 0
  for i = 2, #KEYS do total = total + redis.call('LLEN', KEYS[i]) end
  room = cap - total
  if room < 0 then room = 0 end
end
local accepted = 0
for j = 4, #ARGV, 2 do
  if room >= 0 and accepted >= room then break end
  redis.call('LPUSH', KEYS[2 + tonumber(ARGV[j])], ARGV[j + 1])
  accepted = accepted + 1
end
if accepted > 0 then
  for w = 1, tonumber(ARGV[2]) do redis.call('LPUSH', KEYS[1], 1) end
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[3]))
end
return accepted
"""

# Stores one batch's results, then (when the broker is this Redis) acks its messages: one
# command instead of a pipeline of one SET per result, which costs the worker far more to pack.
# KEYS: inflight hash, deaths hash, n result keys, then one reply list per client
# ARGV: expires, n, acks, suspects, n results, n reply targets (0: publish on the result key,
#       as Celery's backend does; k: KEYS[2 + n + k]), the acked ids, the suspect messages
STORE = """
local ex = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local acks = tonumber(ARGV[3])
local suspects = tonumber(ARGV[4])
-- Redis commands take at most ~8000 arguments from unpack: send long lists in slices.
local function in_slices(cmd, key, items, first, last)
  for i = first, last, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, last)))
  end
end
local replies = {}
for i = 1, n do
  local data = ARGV[4 + i]
  redis.call('SET', KEYS[2 + i], data, 'EX', ex)
  local target = tonumber(ARGV[4 + n + i])
  if target == 0 then
    redis.call('PUBLISH', KEYS[2 + i], data)
  else
    local list = replies[target]
    if not list then list = {}; replies[target] = list end
    list[#list + 1] = data
  end
end
for target, list in pairs(replies) do
  local key = KEYS[2 + n + target]
  in_slices('RPUSH', key, list, 1, #list)
  redis.call('EXPIRE', key, ex)
end
local base = 4 + 2 * n
in_slices('HDEL', KEYS[1], ARGV, base + 1, base + acks)
in_slices('HDEL', KEYS[2], ARGV, base + acks + 1, base + acks + suspects)
return n
"""
