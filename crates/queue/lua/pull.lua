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
-- at most one job per tenant ahead of it in the ring. Shadow copies (a fourth class) earn no
-- share: they are picked only when no job of another tier may be taken, and count among the
-- jobs below the priority tier.
--
-- LoRA adapters (a pool with `adapters`): a tenant's jobs for one adapter are a lane of their
-- own, owned by `<tenant>/<adapter>` in the tier's ring. Within the tier the scheduler picked,
-- the owner taken is, in order: one whose adapter has a job that has waited past the bound
-- (ARGV[10]; the oldest such, among the first 16 owners of the ring); else the first owner of the
-- ring (of its first 256) whose jobs need no swap — the base model, or an adapter resident on this worker's engine
-- (ARGV[9]); else the ring's head, if the engine has room to load its adapter (ARGV[12]: slots
-- free or holding an adapter with nothing running). An adapter taken becomes resident for the
-- rest of this PULL, using that room. Without room the tier gives this worker nothing more:
-- its jobs wait for a worker whose engine holds their adapter or has room, or for the bound.
-- Tiers still come first; within a tier, affinity reorders owners, bounded by the wait.
--
-- Lanes are found through the rings; their names are built from ARGV[5], which is the prefix
-- of KEYS[1] (`P:{pool}:`), so every key touched is in the pool's slot.
--
-- KEYS[1]  P:{pool}:jobs      the pool's job stream
-- KEYS[2]  P:{pool}:waiting   jobs waiting per tier and per tenant; the lower tiers' earned
--                             shares (`credit:default`, `credit:flex`, thousandths of a pick)
-- ARGV[1]  consumer group
-- ARGV[2]  this worker's id (its consumer)
-- ARGV[3]  most jobs to take
-- ARGV[4]  most of them below the priority tier (the rest of its free slots are kept for
--          priority work)
-- ARGV[5]  the pool's key prefix, `P:{pool}:`
-- ARGV[6]  minimum share of the default tier, in thousandths (integers: credits add up exactly)
-- ARGV[7]  minimum share of the flex tier, in thousandths
-- ARGV[8]  '1' when this PULL follows the worker's BLPOP of a wake-up token in one pipeline
--          (that token stands for one of the jobs it takes), else '0'
-- ARGV[9]  the adapters resident on this worker's engine, comma-separated (may be empty)
-- ARGV[10] how long a job may wait for its adapter's turn, ms (0: the pool has no adapters:
--          plain round robin)
-- ARGV[11] now, ms
-- ARGV[12] how many adapters the engine could load now (free slots, and slots whose adapter has
--          nothing running)
--
-- After a BLPOP (ARGV[8] '1'), takes one more wake-up token per job it hands out beyond the
-- first (from `wake:any`, else `wake:priority`): a batch pulled for one token leaves no
-- tokens for its other jobs, which would wake workers to pull nothing (7 PULLs in 10 found
-- nothing at concurrency 16 over two workers when only BLPOP took tokens). A PULL without a
-- BLPOP takes none: were it to take tokens too, a job could lose its token twice — to a
-- worker's BLPOP and to the PULL that took the job — and a waiting job without a token leaves
-- an idle worker asleep for its whole wait (measured: pull TTFT p50 0.57 s instead of 16 ms in
-- the balance benchmark). So tokens may outnumber waiting jobs (an empty PULL), never fall
-- short of them.
--
-- Cost: the scheduler runs on one read of the counts, and writes them back once per tier and
-- tenant it took from; a pick is a ring rotation (LMOVE) and a ZPOPMIN. A PULL that finds
-- nothing it may take writes nothing.
--
-- Returns the entries as XCLAIM returns them ({id, {field, value, …}}), in pick order; or 1 when
-- it took nothing because a tier's jobs are all for adapters this engine has no room for (held
-- back): the worker gives back the token it woke on (it stands for a job another worker may
-- take) and waits for one of its own jobs to end (its room), on its own list only.
local tiers = {'priority', 'default', 'flex', 'shadow'}
local share = {0, tonumber(ARGV[6]), tonumber(ARGV[7]), 0}
local most, below = tonumber(ARGV[3]), tonumber(ARGV[4])
local prefix = ARGV[5]
local w = redis.call('HMGET', KEYS[2], 'priority', 'default', 'flex', 'shadow', 'credit:default',
  'credit:flex')
local count = {}
for i = 1, 4 do count[i] = tonumber(w[i] or '0') end
local credit = {0, tonumber(w[5] or '0'), tonumber(w[6] or '0'), 0}
local was = {credit[2], credit[3]}

local wait_ms, now, room = tonumber(ARGV[10] or '0'), tonumber(ARGV[11] or '0'),
  tonumber(ARGV[12] or '0')
local resident = {}
for a in string.gmatch(ARGV[9] or '', '[^,]+') do resident[a] = true end
local function tenant_of(owner) return string.match(owner, '^[^/]*') end
local function adapter_of(owner) return string.match(owner, '/(.+)$') end
-- An owner whose jobs this engine would have to swap in.
local function swaps(owner)
  local a = adapter_of(owner)
  return wait_ms > 0 and a ~= nil and not resident[a]
end
local function served(owner)
  if swaps(owner) then
    resident[adapter_of(owner)] = true
    room = room - 1
  end
end

-- The owner of tier t's ring to take from for adapter affinity (nil: the ring's head).
local function affine(t, ring)
  local owners = redis.call('LRANGE', ring, 0, 255)
  local starved, since
  for i, o in ipairs(owners) do
    local a = adapter_of(o)
    if i <= 16 and a and not resident[a] then
      local head = redis.call('ZRANGE', prefix .. 'lane:' .. t .. ':' .. o, 0, 0, 'WITHSCORES')
      if #head > 0 then
        local ms = math.floor(tonumber(head[2]) / 1000)
        if now - ms >= wait_ms and (not since or ms < since) then starved, since = o, ms end
      end
    end
  end
  if starved then return starved end
  for _, o in ipairs(owners) do
    local a = adapter_of(o)
    if not a or resident[a] then return o end
  end
  return nil
end

-- One entry id of tier t, from the next owner in its ring (rotated to the back; with adapter
-- affinity, the owner `affine` chooses); nil when the tier has none, and '/blocked' (no tenant's
-- name) as second
-- value when it has jobs only for adapters this engine has no room for. An owner whose lane is
-- found empty leaves the ring.
local function take(t)
  local ring = prefix .. 'ring:' .. t
  while true do
    local owner
    local pick = wait_ms > 0 and affine(t, ring)
    if pick then
      redis.call('LREM', ring, 1, pick)
      redis.call('RPUSH', ring, pick)
      owner = pick
    else
      if wait_ms > 0 then
        local head = redis.call('LINDEX', ring, 0)
        if head and swaps(head) and room <= 0 then return nil, '/blocked' end
      end
      owner = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
    end
    if not owner then return nil end
    local got = redis.call('ZPOPMIN', prefix .. 'lane:' .. t .. ':' .. owner)
    if #got > 0 then
      served(owner)
      return got[1], tenant_of(owner)
    end
    redis.call('LREM', ring, -1, owner)
    redis.call('SREM', prefix .. 'ring-set:' .. t, owner)
  end
end

local ids = {}
local taken, mend, of_tenant = {0, 0, 0, 0}, {false, false, false, false}, {}
-- Tiers whose jobs are all for adapters this engine has no room for: closed for this PULL, their
-- count and credit kept.
local blocked = {false, false, false, false}
while #ids < most do
  local open = {}
  for i = 1, 4 do
    open[i] = count[i] > 0 and not blocked[i] and (i == 1 or below > 0)
    if count[i] <= 0 then credit[i] = 0 end
  end
  local top
  for i = 1, 4 do
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
  if tenant == '/blocked' then
    -- Its jobs wait for another worker (or the bound): not a stale count, and the pick it
    -- was owed stays owed.
    blocked[pick] = true
    if pick ~= top then credit[pick] = credit[pick] + 1000 end
  elseif id then
    count[pick] = count[pick] - 1
    taken[pick] = taken[pick] + 1
    of_tenant[tenant] = (of_tenant[tenant] or 0) + 1
    ids[#ids + 1] = id
    if pick > 1 then below = below - 1 end
  else
    -- The count was stale (nothing left in the tier's lanes): mend it.
    count[pick], mend[pick] = 0, true
  end
end
for i = 1, 4 do
  if mend[i] then
    redis.call('HSET', KEYS[2], tiers[i], 0)
  elseif taken[i] > 0 then
    redis.call('HINCRBY', KEYS[2], tiers[i], -taken[i])
  end
end
for tenant, n in pairs(of_tenant) do
  redis.call('HINCRBY', KEYS[2], 'tenant:' .. tenant, -n)
end
if credit[2] ~= was[1] or credit[3] ~= was[2] then
  redis.call('HSET', KEYS[2], 'credit:default', credit[2], 'credit:flex', credit[3])
end
if #ids == 0 then
  if blocked[1] or blocked[2] or blocked[3] or blocked[4] then return 1 end
  return {}
end
local woken = {0, 0}
if ARGV[8] == '1' then
  woken = {taken[1], taken[2] + taken[3] + taken[4]}
  if woken[2] > 0 then woken[2] = woken[2] - 1 else woken[1] = woken[1] - 1 end
end
if woken[1] > 0 then redis.call('LPOP', prefix .. 'wake:priority', woken[1]) end
if woken[2] > 0 then redis.call('LPOP', prefix .. 'wake:any', woken[2]) end
local cmd = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for _, id in ipairs(ids) do cmd[#cmd + 1] = id end
cmd[#cmd + 1] = 'FORCE'
local claimed = redis.pcall(unpack(cmd))
if type(claimed) == 'table' and claimed.err then
  -- No group (Redis restarted empty since): the popped entries are still on the stream, so
  -- create it and claim them; nothing popped is lost. XCLAIM creates the consumer itself.
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  claimed = redis.call(unpack(cmd))
end
return claimed
