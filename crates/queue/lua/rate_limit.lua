#!lua
-- RATE_LIMIT (gateway, once per admission of a limited tenant's request, before ENQUEUE):
-- checks and charges the tenant's limits over every gateway. Requests and tokens per minute
-- are token buckets (a minute's worth may come at once, then they refill evenly; the bucket is
-- stored as its level and when it was read); concurrent requests are leases in a sorted set
-- (member the job id, score its expiry: a gateway that dies leaves leases that run out).
-- Either every limit allows the request and all are charged, or nothing is. No `allow-oom`:
-- at `maxmemory` the request is refused before anything is written.
--
-- KEYS[1]  P:{t:<tenant>}:rpm       hash {level, ms}: requests left, read at ms
-- KEYS[2]  P:{t:<tenant>}:tpm       hash {level, ms}: tokens left (may go negative: debt)
-- KEYS[3]  P:{t:<tenant>}:inflight  sorted set: job id -> lease expiry (ms)
-- ARGV[1]  now, ms
-- ARGV[2]  requests per minute (0: no limit)
-- ARGV[3]  tokens per minute (0: no limit)
-- ARGV[4]  this request's estimated tokens (prompt + completion)
-- ARGV[5]  max concurrent requests (0: no limit)
-- ARGV[6]  the job id
-- ARGV[7]  the lease's expiry, ms
--
-- Returns {allowed (1/0), the limit that refused ('requests' | 'tokens' | 'concurrent' | ''),
-- retry after (ms), requests left, ms until requests are full again, tokens left, ms until
-- tokens are full again}; the levels are after this request's charge when allowed.
local now = tonumber(ARGV[1])
local rpm, tpm, cost, max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

-- A bucket's level now: what it held plus what refilled since (at most full).
local function level(key, cap)
  if cap <= 0 then return 0 end
  local v = redis.call('HMGET', key, 'level', 'ms')
  if not v[1] then return cap end
  local l = tonumber(v[1]) + (now - tonumber(v[2])) * cap / 60000
  if l > cap then l = cap end
  return l
end
-- Milliseconds until a bucket at level l holds `need` (or is full, for need = cap).
local function wait(l, need, cap)
  if l >= need then return 0 end
  return math.ceil((need - l) * 60000 / cap)
end

local r = level(KEYS[1], rpm)
local t = level(KEYS[2], tpm)
-- A request larger than a minute's tokens waits for a full bucket, then takes it into debt.
local tcost = cost
if tpm > 0 and tcost > tpm then tcost = tpm end
local refused, retry = '', 0
if rpm > 0 and r < 1 then
  refused, retry = 'requests', wait(r, 1, rpm)
elseif tpm > 0 and t < tcost then
  refused, retry = 'tokens', wait(t, tcost, tpm)
end
if refused == '' and max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max then
    refused = 'concurrent'
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    retry = 1000
    if #first > 0 then retry = math.max(1, math.min(1000, tonumber(first[2]) - now)) end
  end
end
if refused == '' then
  if rpm > 0 then
    r = r - 1
    redis.call('HSET', KEYS[1], 'level', r, 'ms', now)
    redis.call('PEXPIRE', KEYS[1], 120000)
  end
  if tpm > 0 then
    t = t - cost
    redis.call('HSET', KEYS[2], 'level', t, 'ms', now)
    redis.call('PEXPIRE', KEYS[2], 120000 + math.max(0, -t) * 60000 / tpm)
  end
  if max > 0 then
    redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
    redis.call('PEXPIRE', KEYS[3], math.max(1, tonumber(ARGV[7]) - now))
  end
end
local allowed = 0
if refused == '' then allowed = 1 end
return {allowed, refused, retry, math.floor(math.max(r, 0)), wait(r, rpm, math.max(rpm, 1)),
  math.floor(math.max(t, 0)), wait(t, tpm, math.max(tpm, 1))}
