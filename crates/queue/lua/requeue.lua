#!lua flags=allow-oom
-- REQUEUE (worker): the engine failed the job before any output reached the client; puts it
-- back, as a new entry at the end of the stream and of its lane, for any worker. Only the run
-- that owns the job may do so, and not once its client has cancelled.
--
-- KEYS[1]  P:{pool}:jobs                   the pool's job stream
-- KEYS[2]  P:{pool}:job:<id>               the job's state
-- KEYS[3]  P:{pool}:queued-bytes
-- KEYS[4]  P:{pool}:lane:<tier>:<owner>    the job's lane
-- KEYS[5]  P:{pool}:ring:<tier>
-- KEYS[6]  P:{pool}:ring-set:<tier>
-- KEYS[7]  P:{pool}:waiting
-- KEYS[8]  P:{pool}:wake:<any|priority>
-- ARGV[1]  consumer group
-- ARGV[2]  the job's current entry id
-- ARGV[3]  this worker's id
-- ARGV[4]  the run's fence
-- ARGV[5]  the job's size in bytes
-- ARGV[6]  state TTL, ms
-- ARGV[7]  its tier
-- ARGV[8]  its lane's owner (its tenant, or `<tenant>/<adapter>`)
-- ARGV[9…] the new entry's field, value pairs
--
-- Returns {1, new entry id}; {0, 'cancelled'} when the client is gone (entry removed); or
-- {0, 'lost'} when another run owns the job (nothing touched).
local cur = redis.call('GET', KEYS[2])
if cur == 'cancelled' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  if redis.call('XDEL', KEYS[1], ARGV[2]) == 1 then redis.call('DECRBY', KEYS[3], ARGV[5]) end
  return {0, 'cancelled'}
end
if cur ~= 'started:' .. ARGV[3] .. ':' .. ARGV[4] then return {0, 'lost'} end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if redis.call('XDEL', KEYS[1], ARGV[2]) == 0 then redis.call('INCRBY', KEYS[3], ARGV[5]) end
redis.call('SET', KEYS[2], 'queued:' .. ARGV[4], 'PX', ARGV[6])
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 9))
lane_add(KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[7], ARGV[8], id)
return {1, id}
