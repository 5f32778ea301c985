#!lua flags=allow-oom
-- RECLAIM (worker): takes over jobs handed to workers whose heartbeat has expired (they died,
-- or stopped for longer than the heartbeat TTL). Scans the pending list from a cursor, so a
-- long list is covered over successive calls instead of only its first window.
--
-- KEYS[1]  P:{pool}:jobs     the pool's job stream
-- KEYS[2]  P:{pool}:workers  live workers: member worker id, score heartbeat expiry (ms)
-- ARGV[1]  consumer group
-- ARGV[2]  this worker's id
-- ARGV[3]  now, ms
-- ARGV[4]  cursor: scan pending entries after this id ('-': from the start)
-- ARGV[5]  most pending entries to look at
-- ARGV[6]  most entries to take
--
-- Returns {next cursor, entries}: entries as XCLAIM returns them ({id, {field, value, …}});
-- the cursor is '-' once the scan reached the end of the list.
local me, now, budget, want = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
local start = '-'
if ARGV[4] ~= '-' then start = '(' .. ARGV[4] end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], start, '+', budget)
local dead, ids, cursor = {}, {}, '-'
for _, p in ipairs(pending) do
  local id, owner = p[1], p[2]
  if #ids >= want then break end
  cursor = id
  if owner ~= me then
    if dead[owner] == nil then
      local score = redis.call('ZSCORE', KEYS[2], owner)
      dead[owner] = (not score) or tonumber(score) < now
    end
    if dead[owner] then ids[#ids + 1] = id end
  end
end
if #pending < budget and #ids < want then cursor = '-' end
if #ids == 0 then return {cursor, {}} end
return {cursor, redis.call('XCLAIM', KEYS[1], ARGV[1], me, 0, unpack(ids))}
