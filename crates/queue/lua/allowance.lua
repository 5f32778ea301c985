#!lua flags=allow-oom
-- ALLOWANCE (gateway): a limited tenant's limits over every gateway. A gateway calls it when a
-- request of the tenant is not covered by what it already holds (`need`), and every 100 ms
-- while it holds anything (no need: it gives back what it did not use, settles the tokens its
-- ended requests really used, reports its slots in use, and renews its lease). Besides the
-- need it may ask for `more`: an allowance for the requests it expects next, granted as far as
-- the buckets allow, so that a busy tenant costs one call per tick instead of one per request.
--
-- Requests and tokens per minute are token buckets (a minute's worth may come at once, then
-- they refill evenly; stored as the level and when it was read). Requests and tokens per day
-- are quotas counted over the UTC day (the count starts again at 00:00 UTC). Give-backs and
-- settlements reach a day's count only when the gateway says they belong to that day (ARGV[18]):
-- an estimate charged before midnight and settled after it does not lower the new day's
-- count. The day never moves backwards (a gateway whose clock lags at midnight counts on the
-- day already begun), and nothing of a quota's last quarter is granted ahead, so a refusal
-- "until midnight" is never caused by an allowance another gateway holds for 100 ms.
-- Concurrent requests are
-- slots held per gateway instance, under a lease the gateway renews: a gateway that dies
-- frees its slots when the lease runs out. Either every limit allows the need and all are
-- charged, or none is (what is given back and settled is applied either way). Everything is
-- computed before the first write, and every number written is whole, so an error cannot
-- leave a half-applied call. Flagged `allow-oom` so that give-backs, settlements and lease
-- renewals still land at `maxmemory` (its writes are a few fixed-size fields; ENQUEUE, which
-- follows a grant, is what refuses new work there).
--
-- KEYS[1]  P:{t:<tenant>}:rpm          hash {level, ms}: requests left, read at ms
-- KEYS[2]  P:{t:<tenant>}:tpm          hash {level, ms}: tokens left (may go negative: debt)
-- KEYS[3]  P:{t:<tenant>}:slots        hash: gateway instance -> slots it holds
-- KEYS[4]  P:{t:<tenant>}:slot-leases  sorted set: gateway instance -> lease expiry (ms)
-- KEYS[5]  P:{t:<tenant>}:day          hash {day, requests, tokens}: used on UTC day `day`
-- ARGV[1]  now, ms
-- ARGV[2]  requests per minute (0: no limit)
-- ARGV[3]  tokens per minute (0: no limit)
-- ARGV[4]  max concurrent requests (0: no limit)
-- ARGV[5]  this gateway's instance
-- ARGV[6]  its lease's expiry, ms
-- ARGV[7]  requests given back (allowance not used)
-- ARGV[8]  tokens given back: allowance not used, plus estimates charged minus tokens used by
--          requests that ended (negative: they used more)
-- ARGV[9]  slots in use at this gateway (its spare slots are given back)
-- ARGV[10] need: requests (0 or 1)
-- ARGV[11] need: tokens (the request's estimate)
-- ARGV[12] need: slots (0 or 1)
-- ARGV[13] more: requests, ARGV[14] more: tokens, ARGV[15] more: slots
-- ARGV[16] requests per day (0: no quota), ARGV[17] tokens per day (0: no quota)
-- ARGV[18] the UTC day (days since the epoch) the next two belong to
-- ARGV[19] requests given back to that day's count, ARGV[20] tokens given back to it (negative:
--          used more than charged)
--
-- Returns {allowed (1/0; 1 when nothing is needed), the limit that refused ('requests' |
-- 'tokens' | 'concurrent' | 'requests_day' | 'tokens_day' | ''), retry after (ms), requests
-- granted, tokens granted, slots granted (need included), requests left, ms until requests are
-- full again, tokens left, ms until tokens are full again, requests left today, tokens left
-- today, ms until the day's quotas start again}; grants are 0 for what the tenant has no limit
-- or quota on.
local now = tonumber(ARGV[1])
local rpm, tpm, max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local me, lease = ARGV[5], ARGV[6]
local in_use = tonumber(ARGV[9])
local need_r, need_t, need_s = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local more_r, more_t, more_s = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local rpd, tpd = tonumber(ARGV[16]), tonumber(ARGV[17])

-- A bucket's level now: what it held plus what refilled since and what is given back (at most
-- full).
local function level(key, cap, back)
  if cap <= 0 then return 0 end
  local v = redis.call('HMGET', key, 'level', 'ms')
  local l = cap
  if v[1] then l = tonumber(v[1]) + (now - tonumber(v[2])) * cap / 60000 end
  l = l + back
  if l > cap then l = cap end
  return l
end
-- Milliseconds until a bucket at level l holds `need` (or is full, for need = cap).
local function wait(l, need, cap)
  if l >= need then return 0 end
  return math.ceil((need - l) * 60000 / cap)
end
local function floor0(x) return math.max(0, math.floor(x)) end

local r = level(KEYS[1], rpm, tonumber(ARGV[7]))
local t = level(KEYS[2], tpm, tonumber(ARGV[8]))
-- Today's quotas: what is left of them, after what is given back to today.
local day = math.floor(now / 86400000)
local rd, td = 0, 0
if rpd > 0 or tpd > 0 then
  local v = redis.call('HMGET', KEYS[5], 'day', 'requests', 'tokens')
  local used_r, used_t = 0, 0
  if v[1] and tonumber(v[1]) >= day then
    day, used_r, used_t = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  end
  if tonumber(ARGV[18]) == day then
    used_r = math.max(0, used_r - tonumber(ARGV[19]))
    used_t = math.max(0, used_t - tonumber(ARGV[20]))
  end
  rd, td = rpd - used_r, tpd - used_t
end
local day_ms = (day + 1) * 86400000 - now
-- Slots: held by the other gateways whose lease has not run out, plus this one's in use.
local held, lapsed = in_use, {}
if max > 0 then
  lapsed = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. now)
  local gone = {}
  for _, g in ipairs(lapsed) do gone[g] = true end
  local all = redis.call('HGETALL', KEYS[3])
  for i = 1, #all, 2 do
    if all[i] ~= me and not gone[all[i]] then held = held + tonumber(all[i + 1]) end
  end
end

-- A request larger than a minute's tokens waits for a full bucket, then takes it into debt.
local t_need = need_t
if tpm > 0 and t_need > tpm then t_need = tpm end
local refused, retry = '', 0
-- A day's quota first: when it is spent, the minute's buckets do not say when to come back.
if rpd > 0 and need_r > 0 and rd < need_r then
  refused, retry = 'requests_day', day_ms
-- A request larger than the day's tokens is served on a fresh day, into debt (as per minute).
elseif tpd > 0 and need_t > 0 and td < math.min(need_t, tpd) then
  refused, retry = 'tokens_day', day_ms
elseif rpm > 0 and need_r > 0 and r < need_r then
  refused, retry = 'requests', wait(r, need_r, rpm)
elseif tpm > 0 and need_t > 0 and t < t_need then
  refused, retry = 'tokens', wait(t, t_need, tpm)
elseif max > 0 and need_s > 0 and held + need_s > max then
  refused = 'concurrent'
  -- A slot frees when a request ends (settled within the next tick) or a lease lapses.
  retry = 1000
end

-- What may be granted beyond the need: the least any limit holds, and of a day's quota what
-- lies above its last quarter.
local function beyond(more, need, a, a_on, b, b_quota)
  local room = more
  if a_on then room = math.min(room, floor0(a - need)) end
  if b_quota > 0 then room = math.min(room, floor0(b - need - math.floor(b_quota / 4))) end
  return room
end
local g_r, g_t, g_s = 0, 0, 0
if refused == '' then
  if rpm > 0 or rpd > 0 then g_r = need_r + beyond(more_r, need_r, r, rpm > 0, rd, rpd) end
  if tpm > 0 or tpd > 0 then g_t = need_t + beyond(more_t, need_t, t, tpm > 0, td, tpd) end
  if max > 0 then g_s = need_s + math.min(more_s, floor0(max - held - need_s)) end
end
if rpm > 0 then
  r = r - g_r
  redis.call('HSET', KEYS[1], 'level', r, 'ms', now)
  redis.call('PEXPIRE', KEYS[1], 120000)
end
if tpm > 0 then
  t = t - g_t
  redis.call('HSET', KEYS[2], 'level', t, 'ms', now)
  -- A debt outlives the key's two minutes by the time it takes to refill.
  redis.call('PEXPIRE', KEYS[2], 120000 + math.ceil(math.max(0, -t) * 60000 / tpm))
end
if rpd > 0 or tpd > 0 then
  rd, td = rd - g_r, td - g_t
  -- Kept until the day is over (and a minute longer, for clocks a little apart).
  redis.call('HSET', KEYS[5], 'day', day, 'requests', rpd - rd, 'tokens', tpd - td)
  redis.call('PEXPIRE', KEYS[5], day_ms + 60000)
end
if max > 0 then
  for _, g in ipairs(lapsed) do redis.call('HDEL', KEYS[3], g) end
  if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. now) end
  if in_use + g_s > 0 then
    redis.call('HSET', KEYS[3], me, in_use + g_s)
    redis.call('ZADD', KEYS[4], lease, me)
  else
    redis.call('HDEL', KEYS[3], me)
    redis.call('ZREM', KEYS[4], me)
  end
  local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  if #last > 0 then
    local ttl = math.max(1, math.floor(tonumber(last[2]) - now))
    redis.call('PEXPIRE', KEYS[3], ttl)
    redis.call('PEXPIRE', KEYS[4], ttl)
  end
end
local allowed = 0
if refused == '' then allowed = 1 end
return {allowed, refused, retry, g_r, g_t, g_s, floor0(r), wait(r, rpm, math.max(rpm, 1)),
  floor0(t), wait(t, tpm, math.max(tpm, 1)), floor0(rd), floor0(td), day_ms}
