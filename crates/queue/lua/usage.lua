#!lua flags=allow-oom
-- USAGE (gateway, for the limited tenant's requests that ended in the last 100 ms, at once):
-- corrects the tokens charged at admission with what the answers really used (`delta` = used
-- - estimated, summed; negative gives tokens back, never beyond a full bucket), and ends the
-- requests' concurrency leases. Frees or shrinks keys, so it runs at `maxmemory` too.
--
-- KEYS[1]  P:{t:<tenant>}:tpm       hash {level, ms}
-- KEYS[2]  P:{t:<tenant>}:inflight  sorted set of leases
-- ARGV[1]  now, ms
-- ARGV[2]  tokens per minute (0: no limit)
-- ARGV[3]  delta: tokens used minus tokens charged
-- ARGV[4…] the job ids
--
-- Returns the tokens left after the correction (0 without a token limit).
local now, tpm, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if #ARGV >= 4 then redis.call('ZREM', KEYS[2], unpack(ARGV, 4)) end
if tpm <= 0 then return 0 end
local v = redis.call('HMGET', KEYS[1], 'level', 'ms')
local l = tpm
if v[1] then l = tonumber(v[1]) + (now - tonumber(v[2])) * tpm / 60000 end
l = math.min(l - delta, tpm)
redis.call('HSET', KEYS[1], 'level', l, 'ms', now)
redis.call('PEXPIRE', KEYS[1], 120000 + math.max(0, -l) * 60000 / tpm)
return math.floor(l)
