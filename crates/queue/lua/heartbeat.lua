#!lua flags=allow-oom
-- HEARTBEAT (worker, every `heartbeat_interval`): this worker is alive until ARGV[2]; publishes
-- its status, reads whether an operator drained it, and drops workers silent for over an hour
-- from both keys (their drains stay: `ssw resume` removes those).
--
-- KEYS[1]  P:{pool}:workers        member worker id, score heartbeat expiry (ms)
-- KEYS[2]  P:{pool}:worker-status  worker id → status JSON
-- KEYS[3]  P:{pool}:drain          worker id → drain JSON (`ssw drain`)
-- ARGV[1]  this worker's id
-- ARGV[2]  heartbeat expiry, ms
-- ARGV[3]  status JSON
-- ARGV[4]  drop workers whose expiry is before this, ms
--
-- Returns {how many stale workers were dropped, this worker's drain JSON or false}.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
for i = 1, #stale, 1000 do
  local part = {unpack(stale, i, math.min(i + 999, #stale))}
  redis.call('ZREM', KEYS[1], unpack(part))
  redis.call('HDEL', KEYS[2], unpack(part))
end
return {#stale, redis.call('HGET', KEYS[3], ARGV[1])}
