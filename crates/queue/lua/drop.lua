#!lua flags=allow-oom
-- DROP (worker): acknowledges and deletes an entry nobody will run (its client cancelled, its
-- deadline passed, or it cannot be decoded), leaving the job's state alone.
--
-- KEYS[1]  P:{pool}:jobs          the pool's job stream
-- KEYS[2]  P:{pool}:queued-bytes
-- ARGV[1]  consumer group
-- ARGV[2]  the entry id
-- ARGV[3]  the job's size in bytes
--
-- Returns 1 when the entry was still there, 0 when someone had deleted it.
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
local deleted = redis.call('XDEL', KEYS[1], ARGV[2])
if deleted == 1 then redis.call('DECRBY', KEYS[2], ARGV[3]) end
return deleted
