#!lua flags=allow-oom
-- CANCEL (gateway): the client is gone, or an enqueue's outcome is unknown. Marks the job
-- cancelled (a worker that claims it skips it; one running it aborts on its next poll) and, if
-- no worker has started it, removes its entry and takes it out of its lane. Frees memory, so it
-- runs at `maxmemory` too.
--
-- KEYS[1]  P:{pool}:job:<id>               the job's state
-- KEYS[2]  P:{pool}:jobs                   the pool's job stream
-- KEYS[3]  P:{pool}:queued-bytes
-- KEYS[4]  P:{pool}:lane:<tier>:<owner>    the job's lane
-- KEYS[5]  P:{pool}:waiting
-- ARGV[1]  the job's entry id, or '' when unknown (the marker alone then keeps it from running)
-- ARGV[2]  marker TTL, ms (outlives the job's deadline)
-- ARGV[3]  the job's size in bytes
-- ARGV[4]  its tier
-- ARGV[5]  its lane's owner (its tenant, or `<tenant>/<adapter>`)
--
-- Returns the state it replaced (false when the job had none: queued, never claimed).
local cur = redis.call('GET', KEYS[1])
local unstarted = (not cur) or string.sub(cur, 1, 7) == 'queued:'
if unstarted and ARGV[1] ~= '' then
  lane_remove(KEYS[4], KEYS[5], ARGV[4], ARGV[5], ARGV[1])
  if redis.call('XDEL', KEYS[2], ARGV[1]) == 1 then redis.call('DECRBY', KEYS[3], ARGV[3]) end
end
redis.call('SET', KEYS[1], 'cancelled', 'PX', ARGV[2])
return cur
