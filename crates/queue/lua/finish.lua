#!lua flags=allow-oom
-- FINISH (worker, after a job's last event): removes the job (acknowledges and deletes its
-- entry, deletes its state) if this run still owns it. A run whose job was taken over touches
-- nothing: the entry and state are the new owner's.
--
-- KEYS[1]  P:{pool}:jobs          the pool's job stream
-- KEYS[2]  P:{pool}:job:<id>      the job's state
-- KEYS[3]  P:{pool}:queued-bytes
-- ARGV[1]  consumer group
-- ARGV[2]  the job's entry id
-- ARGV[3]  this worker's id
-- ARGV[4]  the run's fence
-- ARGV[5]  the job's size in bytes
--
-- Returns 1 when removed (or the client had cancelled it: entry removed, marker kept until its
-- TTL); 0 when another run owns the job or its state is gone.
local cur = redis.call('GET', KEYS[2])
local mine = ':' .. ARGV[3] .. ':' .. ARGV[4]
local owned = cur == 'started' .. mine or cur == 'output' .. mine
if not owned and cur ~= 'cancelled' then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if redis.call('XDEL', KEYS[1], ARGV[2]) == 1 then
  redis.call('DECRBY', KEYS[3], ARGV[5])
end
if owned then redis.call('DEL', KEYS[2]) end
return 1
