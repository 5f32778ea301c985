#!lua flags=allow-oom
-- ALLOWANCE (gateway): a limited tenant's limits over every gateway. A gateway calls it when a
-- request of the tenant is not covered by what it already holds (`need`), and every 100 ms
-- while it holds anything (no need: it gives back what it did not use, settles the tokens its
-- ended requests really used, reports its slots in use, and renews its lease). Besides the
-- need it may ask for `more`: an allowance for the requests it expects next, granted as far as
-- the buckets allow, so that a busy tenant costs one call per tick instead of one per request.
--
-- Requests and tokens per minute are token buckets (a minute's worth may come at once, then
-- they refill evenly; stored as the level and when it was read). Concurrent requests are
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
--
-- Returns {allowed (1/0; 1 when nothing is needed), the limit that refused ('requests' |
-- 'tokens' | 'concurrent' | ''), retry after (ms), requests granted, tokens granted, slots
-- granted (need included), requests left, ms until requests are full again, tokens left, ms
-- until tokens are full again}; grants are 0 for a limit the tenant does not have.
local now = tonumber(ARGV[1])
local rpm, tpm, max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local me, lease = ARGV[5], ARGV[6]
local in_use = tonumber(ARGV[9])
local need_r, need_t, need_s = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local more_r, more_t, more_s = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])

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
if rpm > 0 and need_r > 0 and r < need_r then
  refused, retry = 'requests', wait(r, need_r, rpm)
elseif tpm > 0 and need_t > 0 and t < t_need then
  refused, retry = 'tokens', wait(t, t_need, tpm)
elseif max > 0 and need_s > 0 and held + need_s > max then
  refused = 'concurrent'
  -- A slot frees when a request ends (settled within the next tick) or a lease lapses.
  retry = 1000
end

local g_r, g_t, g_s = 0, 0, 0
if refused == '' then
  if rpm > 0 then g_r = need_r + math.min(more_r, floor0(r - need_r)) end
  if tpm > 0 then g_t = need_t + math.min(more_t, floor0(t - need_t)) end
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
  floor0(t), wait(t, tpm, math.max(tpm, 1))}
