-- nudge(arrivals): wakes an idle worker after a message went onto any list but the arrivals list
-- (needs lib/keys.lua in front of it).
--
-- An idle worker blocks with BLMOVE on one list only, the arrivals list (normal priority, where
-- our clients' requests go by default), so a message pushed there wakes it with the message
-- itself. A message put anywhere else (another priority, the suspect list) wakes it with a nudge
-- (scripts.NUDGE, a string no producer sends: neither JSON nor msgpack) pushed onto the arrivals
-- list, only when that list is empty (a list that holds anything has no worker blocked on it).
-- The nudge is no message: fetch.lua drops the nudges it meets, a worker that lands one fetches
-- instead, and requeue drops them.
local NUDGE = '\0wkr-nudge'
local function nudge(arrivals)
  if on_key('LLEN', arrivals) == 0 then redis.call('LPUSH', arrivals, NUDGE) end
end
