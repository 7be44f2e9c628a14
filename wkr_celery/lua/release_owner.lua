-- release_owner.lua: a stopping decentralize central deletes its owner token and its status,
-- only while the token is still its own.
--
-- Returns the number of keys deleted (0 when the token is gone or another central's).
local owner = KEYS[1]
local status = KEYS[2]

local token = ARGV[1]

if redis.call('GET', owner) == token then return redis.call('DEL', owner, status) end
return 0
