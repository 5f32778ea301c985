#!lua flags=no-writes
-- POOL_STATS (gateway metrics and readiness, `ssw status`): one pool's queue and workers.
--
-- KEYS[1]  P:{pool}:jobs           the pool's job stream
-- KEYS[2]  P:{pool}:workers        live workers
-- KEYS[3]  P:{pool}:worker-status  their statuses
-- KEYS[4]  P:{pool}:queued-bytes
-- ARGV[1]  consumer group
-- ARGV[2]  now, ms (workers whose heartbeat expires before are not live)
--
-- Returns {stream length, pending, oldest waiting entry id or false, live statuses, queued bytes}.
local len = redis.call('XLEN', KEYS[1])
local pending = 0
local oldest = false
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and p.err == nil then pending = p[1] end
local g = redis.pcall('XINFO', 'GROUPS', KEYS[1])
local last = '0-0'
if type(g) == 'table' and g.err == nil then
  for _, grp in ipairs(g) do
    for i = 1, #grp, 2 do
      if grp[i] == 'name' and grp[i + 1] ~= ARGV[1] then break end
      if grp[i] == 'last-delivered-id' then last = grp[i + 1] end
    end
  end
end
local first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
if #first > 0 then oldest = first[1][1] end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[2], '+inf', 'LIMIT', 0, 1000)
local statuses = {}
if #live > 0 then statuses = redis.call('HMGET', KEYS[3], unpack(live)) end
return {len, pending, oldest, statuses, tonumber(redis.call('GET', KEYS[4]) or '0')}
