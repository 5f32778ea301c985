#!lua flags=no-writes
-- POOL_STATS (gateway metrics and readiness, `ssw status`): one pool's queue and workers.
--
-- KEYS[1]  P:{pool}:jobs           the pool's job stream
-- KEYS[2]  P:{pool}:workers        live workers
-- KEYS[3]  P:{pool}:worker-status  their statuses
-- KEYS[4]  P:{pool}:queued-bytes
-- KEYS[5]  P:{pool}:waiting        jobs waiting per tier and per tenant
-- ARGV[1]  consumer group
-- ARGV[2]  now, ms (workers whose heartbeat expires before are not live)
-- ARGV[3]  the pool's key prefix, `P:{pool}:` (lane names are built from it, as PULL does)
--
-- Returns {stream length, pending, live statuses, queued bytes, tiers, tenants}: tiers is
-- {waiting, oldest waiting entry's lane score or false} for priority, default and flex (the
-- oldest is looked for in the lanes of the first 100 tenants of each ring); tenants is
-- {name, waiting, …} over every tenant with a count.
local len = redis.call('XLEN', KEYS[1])
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and p.err == nil then pending = p[1] end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[2], '+inf', 'LIMIT', 0, 1000)
local statuses = {}
if #live > 0 then statuses = redis.call('HMGET', KEYS[3], unpack(live)) end
local tiers = {}
for _, t in ipairs({'priority', 'default', 'flex'}) do
  local oldest = false
  for _, tenant in ipairs(redis.call('LRANGE', ARGV[3] .. 'ring:' .. t, 0, 99)) do
    local head = redis.call('ZRANGE', ARGV[3] .. 'lane:' .. t .. ':' .. tenant, 0, 0, 'WITHSCORES')
    if #head > 0 and (not oldest or tonumber(head[2]) < oldest) then oldest = tonumber(head[2]) end
  end
  tiers[#tiers + 1] = {tonumber(redis.call('HGET', KEYS[5], t) or '0'), oldest}
end
local tenants = {}
local counts = redis.call('HGETALL', KEYS[5])
for i = 1, #counts, 2 do
  if string.sub(counts[i], 1, 7) == 'tenant:' then
    tenants[#tenants + 1] = string.sub(counts[i], 8)
    tenants[#tenants + 1] = counts[i + 1]
  end
end
return {len, pending, statuses, tonumber(redis.call('GET', KEYS[4]) or '0'), tiers, tenants}
