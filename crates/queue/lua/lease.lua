#!lua flags=allow-oom
-- LEASE (gateway): takes or renews a lease, so that one process at a time does a job for
-- everyone (a route's guard judges its variants).
--
-- KEYS[1]  the lease (a route's guard: P:{r:<route>}:guard)
-- ARGV[1]  the caller (a gateway instance)
-- ARGV[2]  the lease's length, ms
--
-- Returns 1 when the caller holds the lease now (taken, or renewed because it held it), else 0.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
