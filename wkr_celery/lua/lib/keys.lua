-- on_key(command, key, ...): redis.call on one of our keys (a list, the deaths hash, a dead
-- worker's inflight hash), which someone with write access to Redis may have made another
-- type. Such a key holds none of our messages, yet every call on it failed with WRONGTYPE:
-- each client's publish, each worker's fetch (which killed the worker, restarted to fail
-- again), every sweep of dead workers, for as long as it stayed. It is deleted and the call
-- made again. No extra command when the key has its type or is missing.
local function on_key(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'WRONGTYPE', 1, true) == nil then
      -- Any other error (OOM, READONLY, MISCONF) is raised as redis.call raises it, so the
      -- caller reads Redis's own reply: error(reply) reaches it as "attempt to concatenate
      -- a table value" from Redis 6.2's script error handler. The call fails the same way
      -- again (nothing changed in between).
      return redis.call(command, key, ...)
    end
    redis.call('DEL', key)
    return redis.call(command, key, ...)
  end
  return reply
end
