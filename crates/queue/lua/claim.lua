#!lua flags=allow-oom
-- CLAIM (worker, once per pulled batch): decides, atomically per job, whether this worker may
-- run it, and fences the run. Each claim that lets a worker run a job takes the next fence
-- number (one more than the job's last); every reply event of the run carries it, and the
-- gateway ignores events of an older fence, so a worker that was only slow can never
-- interleave with the one that took its job over.
--
-- KEYS[i]    P:{pool}:job:<id>  state of the batch's i-th job
-- ARGV[1]    this worker's id
-- ARGV[2]    state TTL, ms (longer than any run)
-- ARGV[3]    now, ms
-- ARGV[3+i]  the i-th job's start deadline, ms
--
-- State values: none (queued, never claimed); `queued:<fence>` (put back after a run);
-- `started:<worker>:<fence>`; `output:<worker>:<fence>` (a response is committed to the
-- client: never run again); `cancelled`.
--
-- Returns, per job, {verdict, fence}: `run` (state now `started:<me>:<fence>`), `cancelled`
-- (client gone), `expired` (deadline passed before anyone started it; marked cancelled), or
-- `orphaned` (the worker that committed a response died: tell the client, with this fence).
local res = {}
local me, ttl, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local fence = 0
  if cur then fence = tonumber(string.match(cur, ':(%d+)$')) or 0 end
  if cur == 'cancelled' then
    res[i] = {'cancelled', 0}
  elseif cur and string.sub(cur, 1, 7) == 'output:' then
    res[i] = {'orphaned', fence + 1}
  elseif ((not cur) or string.sub(cur, 1, 7) == 'queued:') and now > tonumber(ARGV[3 + i]) then
    redis.call('SET', key, 'cancelled', 'PX', ttl)
    res[i] = {'expired', 0}
  else
    -- Unclaimed, put back, or started by a worker that died (only reclaimed entries get here).
    redis.call('SET', key, 'started:' .. me .. ':' .. (fence + 1), 'PX', ttl)
    res[i] = {'run', fence + 1}
  end
end
return res
