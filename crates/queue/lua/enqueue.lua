#!lua
-- ENQUEUE (gateway): admission and enqueue in one step, so the pool's limits hold under any
-- concurrency. No `allow-oom` flag: Redis refuses the whole script when it is at `maxmemory`
-- (an OOM error the gateway answers 503 `queue_memory_full`), before anything is written.
--
-- KEYS[1]  P:{pool}:jobs                   the pool's job stream (consumer group ARGV[1])
-- KEYS[2]  P:{pool}:queued-bytes           bytes of job bodies on the stream
-- KEYS[3]  P:{pool}:lane:<tier>:<owner>    the job's lane (owner: its tenant, or
--                                          `<tenant>/<adapter>`)
-- KEYS[4]  P:{pool}:ring:<tier>            the tier's tenants with waiting jobs
-- KEYS[5]  P:{pool}:ring-set:<tier>
-- KEYS[6]  P:{pool}:waiting                jobs waiting per tier and per tenant
-- KEYS[7]  P:{pool}:wake:<any|priority>    wake-up tokens
-- ARGV[1]  consumer group (unused: the backlog is read from the waiting counts)
-- ARGV[2]  max backlog: jobs no worker has been handed yet (the waiting counts of the tiers,
--          which PULL and every script that adds or removes a waiting job keep exact)
-- ARGV[3]  max queued bytes (every entry on the stream, handed out or not)
-- ARGV[4]  this job's size in bytes (its body)
-- ARGV[5]  its tier
-- ARGV[6]  its lane's owner
-- ARGV[7]  max jobs waiting in this tier (0: no bound of its own)
-- ARGV[8]  max jobs of this tenant waiting in this pool (0: no bound)
-- ARGV[9…] the entry's field, value pairs
--
-- Returns {1, entry id} when enqueued; {0, 'jobs' | 'tier' | 'tenant', waiting} or
-- {0, 'bytes', queued bytes} when a limit refused it (nothing written).
local tier, owner = ARGV[5], ARGV[6]
local tenant = tenant_of(owner)
local w = redis.call('HMGET', KEYS[6], 'priority', 'default', 'flex', tier, 'tenant:' .. tenant)
local backlog = 0
for i = 1, 3 do backlog = backlog + math.max(0, tonumber(w[i] or '0')) end
if backlog >= tonumber(ARGV[2]) then return {0, 'jobs', backlog} end
local in_tier = tonumber(w[4] or '0')
if tonumber(ARGV[7]) > 0 and in_tier >= tonumber(ARGV[7]) then return {0, 'tier', in_tier} end
local of_tenant = tonumber(w[5] or '0')
if tonumber(ARGV[8]) > 0 and of_tenant >= tonumber(ARGV[8]) then
  return {0, 'tenant', of_tenant}
end
local size = tonumber(ARGV[4])
local queued = tonumber(redis.call('GET', KEYS[2]) or '0')
if queued + size > tonumber(ARGV[3]) then return {0, 'bytes', queued} end
redis.call('INCRBY', KEYS[2], size)
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 9))
lane_add(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], tier, owner, id)
return {1, id}
