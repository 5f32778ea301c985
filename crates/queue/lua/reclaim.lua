#!lua flags=allow-oom
-- RECLAIM (worker): takes over jobs handed to workers whose heartbeat has expired (they died,
-- or stopped for longer than the heartbeat TTL), and jobs stranded under this worker: pending
-- under its name for longer than a pull or claim could take, yet not in its hands (a PULL whose
-- reply was lost to a timeout still ran; a claim or drop that failed left its entry behind).
-- Nobody else would ever take those, the worker being alive. Scans the pending list from a
-- cursor, so a long list is covered over successive calls instead of only its first window.
--
-- KEYS[1]  P:{pool}:jobs     the pool's job stream
-- KEYS[2]  P:{pool}:workers  live workers: member worker id, score heartbeat expiry (ms)
-- ARGV[1]  consumer group
-- ARGV[2]  this worker's id
-- ARGV[3]  now, ms
-- ARGV[4]  cursor: scan pending entries after this id ('-': from the start)
-- ARGV[5]  most pending entries to look at
-- ARGV[6]  most entries to take
-- ARGV[7]  stranded after, ms: an entry of this worker's idle that long and not in ARGV[8…]
--          is taken back (longer than the worker waits for any PULL or CLAIM reply)
-- ARGV[8…] the entries this worker holds (its running jobs)
--
-- Returns {next cursor, entries, stranded}: entries as XCLAIM returns them ({id, {field,
-- value, …}}), of which `stranded` were this worker's own; the cursor is '-' once the scan
-- reached the end of the list.
local me, now, budget, want = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
local stranded_after = tonumber(ARGV[7])
local held = {}
for i = 8, #ARGV do held[ARGV[i]] = true end
local start = '-'
if ARGV[4] ~= '-' then start = '(' .. ARGV[4] end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], start, '+', budget)
local dead, ids, cursor, stranded = {}, {}, '-', 0
for _, p in ipairs(pending) do
  local id, owner, idle = p[1], p[2], tonumber(p[3])
  if #ids >= want then break end
  cursor = id
  if owner ~= me then
    if dead[owner] == nil then
      local score = redis.call('ZSCORE', KEYS[2], owner)
      dead[owner] = (not score) or tonumber(score) < now
    end
    if dead[owner] then ids[#ids + 1] = id end
  elseif idle >= stranded_after and not held[id] then
    ids[#ids + 1] = id
    stranded = stranded + 1
  end
end
if #pending < budget and #ids < want then cursor = '-' end
if #ids == 0 then return {cursor, {}, 0} end
return {cursor, redis.call('XCLAIM', KEYS[1], ARGV[1], me, 0, unpack(ids)), stranded}
