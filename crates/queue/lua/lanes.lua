-- LANES (a library, not a script): inserted after the first line of ENQUEUE, REQUEUE, CANCEL
-- and EXPIRE. A pool's waiting jobs are indexed in lanes, one per tier and owner: a sorted set
-- of entry ids by arrival. An owner is a tenant, or `<tenant>/<adapter>` for its jobs of one
-- LoRA adapter. Each tier keeps a ring of its owners with waiting jobs (a list in turn order,
-- and a set for membership), which PULL serves round robin. Counts per tier and per tenant (all
-- its owners together) are kept in the pool's `waiting` hash. All keys are the pool's, in its
-- `{pool}` slot.

-- The tenant of an owner.
local function tenant_of(owner)
  return string.match(owner, '^[^/]*')
end

-- Indexes entry `id` in its lane, counts it waiting, and leaves a wake-up token for an idle
-- worker (at most 1024 wait: a token per waiting job in any normal backlog, bounded when no
-- worker is idle; a worker that finds the queue empty waits for the next token).
local function lane_add(lane, ring, ring_set, waiting, wake, tier, owner, id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  redis.call('ZADD', lane, tonumber(ms) * 1000 + math.min(tonumber(seq), 999), id)
  if redis.call('SADD', ring_set, owner) == 1 then redis.call('RPUSH', ring, owner) end
  redis.call('HINCRBY', waiting, tier, 1)
  redis.call('HINCRBY', waiting, 'tenant:' .. tenant_of(owner), 1)
  if redis.call('LPUSH', wake, 1) > 1024 then redis.call('LTRIM', wake, 0, 1023) end
end

-- Takes entry `id` out of its lane (a job no worker will pull: cancelled, expired, put back
-- under a new id). The owner stays in the ring until PULL finds its lane empty.
local function lane_remove(lane, waiting, tier, owner, id)
  if redis.call('ZREM', lane, id) == 1 then
    redis.call('HINCRBY', waiting, tier, -1)
    redis.call('HINCRBY', waiting, 'tenant:' .. tenant_of(owner), -1)
  end
end
