-- store.lua: a worker stores one batch's results in one command and, when the broker is this
-- Redis, acks the batch's messages in the same command: one script call instead of a pipeline of
-- one SET per result, which costs the worker far more to pack.
--
-- Each result is SET on its result key (Celery's `celery-task-meta-<id>`, expiring). A result
-- for a foreign producer (reply target 0) is also PUBLISHed on that key, as Celery's backend
-- does; a result for one of our clients goes onto that client's reply list instead (unless
-- that key holds another type: then the result key alone has it).
--
-- KEYS: inflight hash ('' when not acking), deaths hash, landing list ('' when not acking),
--       then `n` result keys, then one reply list per client (reply target k is KEYS[3 + n + k])
-- ARGV: expires, n, acks, suspects, landed, then n results, then n reply targets, then `acks`
--       inflight ids to forget, then `suspects` messages whose death counts to forget, then
--       `landed` messages to take off the landing list (taken there by BLMOVE, see
--       lib/requeue.lua)
-- Returns n.
local inflight = KEYS[1]
local deaths = KEYS[2]
local landing = KEYS[3]
local first_result_key = 4

local expires = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local acks = tonumber(ARGV[3])
local suspects = tonumber(ARGV[4])
local landed = tonumber(ARGV[5])
local first_result = 6
local first_target = first_result + n
local first_ack = first_target + n
local first_suspect = first_ack + acks
local first_landed = first_suspect + suspects

-- unpack() of more than LUAI_MAXCSTACK (8000) values fails: send long lists in slices.
local SLICE = 1000
local function in_slices(command, key, items, first, last)
  for i = first, last, SLICE do
    redis.call(command, key, unpack(items, i, math.min(i + SLICE - 1, last)))
  end
end

local replies = {}
for i = 1, n do
  local key = KEYS[first_result_key + i - 1]
  local data = ARGV[first_result + i - 1]
  redis.call('SET', key, data, 'EX', expires)
  local target = tonumber(ARGV[first_target + i - 1])
  if target == 0 then
    redis.call('PUBLISH', key, data)
  else
    local list = replies[target]
    if not list then list = {}; replies[target] = list end
    list[#list + 1] = data
  end
end
for target, list in pairs(replies) do
  local key = KEYS[first_result_key + n + target - 1]
  -- A reply key of another type (written by someone else) must not fail the script: the
  -- worker would die with the batch unacked, and so would every worker after it. Its results
  -- stay on their result keys, where the client's recovery reads them.
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'list' or kind == 'none' then
    in_slices('RPUSH', key, list, 1, #list)
    redis.call('EXPIRE', key, expires)
  end
end
in_slices('HDEL', inflight, ARGV, first_ack, first_suspect - 1)
in_slices('HDEL', deaths, ARGV, first_suspect, first_suspect + suspects - 1)
for i = first_landed, first_landed + landed - 1 do redis.call('LREM', landing, -1, ARGV[i]) end
return n
