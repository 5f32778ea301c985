#!lua flags=allow-oom
-- KEEP_REPLIES (gateway, at start, on every reconnect and every third of the TTL): creates the
-- gateway's reply stream if missing (empty, through a consumer group) and renews its TTL. The
-- stream's existence is how workers know the gateway is alive.
--
-- KEYS[1]  P:{gw:<instance>}:replies
-- ARGV[1]  TTL, ms
--
-- Returns 1 if the stream existed, 0 if it was created (Redis lost it, or first start).
local existed = redis.call('EXISTS', KEYS[1])
if existed == 0 then redis.call('XGROUP', 'CREATE', KEYS[1], 'gateway', '$', 'MKSTREAM') end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return existed
