#!lua flags=allow-oom
-- MARK_OUTPUT (worker, with the first bytes of a stream): commits the response to the client,
-- if this run still owns the job. From then on the job must never run again.
--
-- KEYS[1]  P:{pool}:job:<id>  the job's state
-- ARGV[1]  this worker's id
-- ARGV[2]  the run's fence
-- ARGV[3]  state TTL, ms
--
-- Returns 1 when this run owns the job (now `output:<me>:<fence>`); else the state found
-- (`cancelled`, another run's, or false when there is none): the run must stop.
local started = 'started:' .. ARGV[1] .. ':' .. ARGV[2]
local output = 'output:' .. ARGV[1] .. ':' .. ARGV[2]
local cur = redis.call('GET', KEYS[1])
if cur == started then
  redis.call('SET', KEYS[1], output, 'PX', ARGV[3])
  return 1
end
if cur == output then return 1 end
return cur
