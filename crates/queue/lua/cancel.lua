#!lua flags=allow-oom
-- CANCEL (gateway): the client is gone, or an enqueue's outcome is unknown. Marks the job
-- cancelled (a worker that claims it skips it; one running it aborts on its next poll) and, if
-- no worker has started it, removes its entry. Frees memory, so it runs at `maxmemory` too.
--
-- KEYS[1]  P:{pool}:job:<id>      the job's state
-- KEYS[2]  P:{pool}:jobs          the pool's job stream
-- KEYS[3]  P:{pool}:queued-bytes
-- ARGV[1]  the job's entry id, or '' when unknown (the marker alone then keeps it from running)
-- ARGV[2]  marker TTL, ms (outlives the job's deadline)
-- ARGV[3]  the job's size in bytes
--
-- Returns the state it replaced (false when the job had none: queued, never claimed).
local cur = redis.call('GET', KEYS[1])
local unstarted = (not cur) or string.sub(cur, 1, 7) == 'queued:'
if unstarted and ARGV[1] ~= '' and redis.call('XDEL', KEYS[2], ARGV[1]) == 1 then
  redis.call('DECRBY', KEYS[3], ARGV[3])
end
redis.call('SET', KEYS[1], 'cancelled', 'PX', ARGV[2])
return cur
