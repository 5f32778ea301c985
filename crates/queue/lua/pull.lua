#!lua flags=allow-oom
-- PULL (worker): hands this worker up to ARGV[3] waiting jobs, chosen across the pool's lanes,
-- and puts them in its pending list (XCLAIM … FORCE: entries are never read with `>`, so the
-- group's delivery cursor is unused and a job waits exactly as long as the scheduler says).
--
-- The scheduler, per pick: the highest tier with waiting jobs is served, except that each lower
-- tier with waiting jobs earns its minimum share (ARGV[6], ARGV[7]) per pick it is passed over,
-- and is served as soon as it has earned a whole pick (the one with most credit first). With
-- every tier backlogged and shares 0.3 / 0.1, picks go 6:3:1 to priority, default and flex; a
-- tier with nothing waiting earns nothing (no banking). Within a tier, tenants take turns (one
-- job each, round robin over the tier's ring), so one tenant's burst delays another's job by
-- at most one job per tenant ahead of it in the ring.
--
-- Lanes are found through the rings; their names are built from ARGV[5], which is the prefix
-- of KEYS[1] (`P:{pool}:`), so every key touched is in the pool's slot.
--
-- KEYS[1]  P:{pool}:jobs      the pool's job stream
-- KEYS[2]  P:{pool}:waiting   jobs waiting per tier and per tenant
-- KEYS[3]  P:{pool}:credits   the lower tiers' earned shares
-- ARGV[1]  consumer group
-- ARGV[2]  this worker's id (its consumer)
-- ARGV[3]  most jobs to take
-- ARGV[4]  most of them below the priority tier (the rest of its free slots are kept for
--          priority work)
-- ARGV[5]  the pool's key prefix, `P:{pool}:`
-- ARGV[6]  minimum share of the default tier, in thousandths (integers: credits add up exactly)
-- ARGV[7]  minimum share of the flex tier, in thousandths
--
-- Creates the consumer group if it is missing (Redis restarted empty).
--
-- Returns the entries as XCLAIM returns them ({id, {field, value, …}}), in pick order.
-- Redis does not undo a script's writes when a later command fails: make sure the closing
-- XCLAIM cannot fail for want of the group (Redis restarted empty) before popping anything.
local member = redis.pcall('XGROUP', 'CREATECONSUMER', KEYS[1], ARGV[1], ARGV[2])
if type(member) == 'table' and member.err then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
local tiers = {'priority', 'default', 'flex'}
local share = {0, tonumber(ARGV[6]), tonumber(ARGV[7])}
local most, below = tonumber(ARGV[3]), tonumber(ARGV[4])
local prefix = ARGV[5]
local credit = {0, 0, 0}
local saved = redis.call('HMGET', KEYS[3], 'default', 'flex')
credit[2], credit[3] = tonumber(saved[1] or '0'), tonumber(saved[2] or '0')

-- One entry id of tier t, from the next tenant in its ring; nil when the tier has none.
local function take(t)
  local ring, members = prefix .. 'ring:' .. t, prefix .. 'ring-set:' .. t
  while true do
    local tenant = redis.call('LPOP', ring)
    if not tenant then return nil end
    local lane = prefix .. 'lane:' .. t .. ':' .. tenant
    local got = redis.call('ZPOPMIN', lane)
    if #got == 0 then
      redis.call('SREM', members, tenant)
    else
      if redis.call('ZCARD', lane) > 0 then
        redis.call('RPUSH', ring, tenant)
      else
        redis.call('SREM', members, tenant)
      end
      return got[1], tenant
    end
  end
end

local ids = {}
while #ids < most do
  local w = redis.call('HMGET', KEYS[2], 'priority', 'default', 'flex')
  local open = {}
  for i = 1, 3 do
    open[i] = tonumber(w[i] or '0') > 0 and (i == 1 or below > 0)
    if tonumber(w[i] or '0') <= 0 then credit[i] = 0 end
  end
  local top
  for i = 1, 3 do
    if open[i] then top = i; break end
  end
  if not top then break end
  local pick, best = top, 0
  for i = top + 1, 3 do
    if open[i] then
      credit[i] = credit[i] + share[i]
      -- On a tie the lower tier goes first: it is the one further below its share.
      if credit[i] >= 1000 and credit[i] >= best then pick, best = i, credit[i] end
    end
  end
  if pick ~= top then credit[pick] = credit[pick] - 1000 end
  local id, tenant = take(tiers[pick])
  if id then
    redis.call('HINCRBY', KEYS[2], tiers[pick], -1)
    redis.call('HINCRBY', KEYS[2], 'tenant:' .. tenant, -1)
    ids[#ids + 1] = id
    if pick > 1 then below = below - 1 end
  else
    -- The count was stale (nothing left in the tier's lanes): mend it.
    redis.call('HSET', KEYS[2], tiers[pick], 0)
  end
end
redis.call('HSET', KEYS[3], 'default', credit[2], 'flex', credit[3])
if #ids == 0 then return {} end
local cmd = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for _, id in ipairs(ids) do cmd[#cmd + 1] = id end
cmd[#cmd + 1] = 'FORCE'
return redis.call(unpack(cmd))
