#!lua flags=allow-oom
-- EXPIRE (gateway, at a job's deadline): if no worker has started the job, cancel and remove
-- it (entry and lane), so it never runs and its client gets 503 `queue_timeout`; otherwise
-- leave it running. Excludes CLAIM: a job is either started by a worker or expired, never both.
--
-- KEYS[1]  P:{pool}:job:<id>               the job's state
-- KEYS[2]  P:{pool}:jobs                   the pool's job stream
-- KEYS[3]  P:{pool}:queued-bytes
-- KEYS[4]  P:{pool}:lane:<tier>:<owner>    the job's lane
-- KEYS[5]  P:{pool}:waiting
-- ARGV[1]  the job's entry id
-- ARGV[2]  marker TTL, ms
-- ARGV[3]  the job's size in bytes
-- ARGV[4]  its tier
-- ARGV[5]  its lane's owner (its tenant, or `<tenant>/<adapter>`)
--
-- Returns false when it expired the job; else the state (`started:…` or `output:…`).
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == 'cancelled' or string.sub(cur, 1, 7) == 'queued:' then
  redis.call('SET', KEYS[1], 'cancelled', 'PX', ARGV[2])
  lane_remove(KEYS[4], KEYS[5], ARGV[4], ARGV[5], ARGV[1])
  if redis.call('XDEL', KEYS[2], ARGV[1]) == 1 then
    redis.call('DECRBY', KEYS[3], ARGV[3])
  end
  return false
end
return cur
