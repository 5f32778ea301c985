#!lua
-- ENQUEUE (gateway): admission and enqueue in one step, so the pool's limits hold under any
-- concurrency. No `allow-oom` flag: Redis refuses the whole script when it is at `maxmemory`
-- (an OOM error the gateway answers 503 `queue_memory_full`), before anything is written.
--
-- KEYS[1]  P:{pool}:jobs          the pool's job stream (consumer group ARGV[1])
-- KEYS[2]  P:{pool}:queued-bytes  bytes of job bodies on the stream
-- ARGV[1]  consumer group
-- ARGV[2]  max backlog: entries no worker has been handed yet (stream length - pending)
-- ARGV[3]  max queued bytes (every entry on the stream, handed out or not)
-- ARGV[4]  this job's size in bytes (its body)
-- ARGV[5…] the entry's field, value pairs
--
-- Returns {1, entry id} when enqueued; {0, 'jobs', backlog} or {0, 'bytes', queued bytes} when
-- a limit refused it (nothing written).
local len = redis.call('XLEN', KEYS[1])
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and p.err == nil then pending = p[1] end
local backlog = len - pending
if backlog < 0 then backlog = 0 end
if backlog >= tonumber(ARGV[2]) then return {0, 'jobs', backlog} end
local size = tonumber(ARGV[4])
local queued = tonumber(redis.call('GET', KEYS[2]) or '0')
if queued + size > tonumber(ARGV[3]) then return {0, 'bytes', queued} end
redis.call('INCRBY', KEYS[2], size)
return {1, redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5))}
