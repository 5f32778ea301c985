#!lua flags=allow-oom
-- RENEW_LEASES (gateway, every third of `gateway.reply_ttl`): extends the concurrency leases
-- of one tenant's requests this gateway still serves; a lease of a request that ended is not
-- brought back (XX).
--
-- KEYS[1]  P:{t:<tenant>}:inflight  sorted set of leases
-- ARGV[1]  the new expiry, ms
-- ARGV[2]  now, ms
-- ARGV[3…] job ids
--
-- Returns how many leases were extended.
local n = 0
for i = 3, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[i])
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(ARGV[1]) - tonumber(ARGV[2]))) end
return n
