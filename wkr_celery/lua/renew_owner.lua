-- renew_owner.lua: a decentralize central renews its owner token, only while the token is still
-- its own (a central that stalled past the token's life must not steal it back).
--
-- Returns 1 when renewed, 0 when the token is gone or another central's.
local owner = KEYS[1]

local token = ARGV[1]
local ttl = ARGV[2]              -- seconds

if redis.call('GET', owner) == token then
  redis.call('EXPIRE', owner, ttl)
  return 1
end
return 0
