-- LANES (a library, not a script): inserted after the first line of ENQUEUE, REQUEUE, CANCEL
-- and EXPIRE. A pool's waiting jobs are indexed in lanes, one per tier and tenant: a sorted set
-- of entry ids by arrival. Each tier keeps a ring of its tenants with waiting jobs (a list in
-- turn order, and a set for membership), which PULL serves round robin. Counts per tier and per
-- tenant are kept in the pool's `waiting` hash. All keys are the pool's, in its `{pool}` slot.

-- Indexes entry `id` in its lane, counts it waiting, and leaves a wake-up token for an idle
-- worker (at most 1024 wait: a token per waiting job in any normal backlog, bounded when no
-- worker is idle; a worker that finds the queue empty waits for the next token).
local function lane_add(lane, ring, ring_set, waiting, wake, tier, tenant, id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  redis.call('ZADD', lane, tonumber(ms) * 1000 + math.min(tonumber(seq), 999), id)
  if redis.call('SADD', ring_set, tenant) == 1 then redis.call('RPUSH', ring, tenant) end
  redis.call('HINCRBY', waiting, tier, 1)
  redis.call('HINCRBY', waiting, 'tenant:' .. tenant, 1)
  if redis.call('LPUSH', wake, 1) > 1024 then redis.call('LTRIM', wake, 0, 1023) end
end

-- Takes entry `id` out of its lane (a job no worker will pull: cancelled, expired, put back
-- under a new id). The tenant stays in the ring until PULL finds its lane empty.
local function lane_remove(lane, waiting, tier, tenant, id)
  if redis.call('ZREM', lane, id) == 1 then
    redis.call('HINCRBY', waiting, tier, -1)
    redis.call('HINCRBY', waiting, 'tenant:' .. tenant, -1)
  end
end
