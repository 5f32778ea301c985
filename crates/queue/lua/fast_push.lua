#!lua
-- FAST_PUSH (gateway): puts a job that generates nothing (`/tokenize`, `/detokenize`) on the
-- pool's fast lane, unless the lane already holds its bound. Workers pop it with BLPOP beside
-- their generation slots (at most once: a worker that dies with it leaves the gateway's
-- deadline to tell the client). No `allow-oom`: a full Redis refuses it, as it refuses jobs.
--
-- KEYS[1]  P:{pool}:fast   list of jobs (JSON objects of the job's fields)
-- ARGV[1]  the job
-- ARGV[2]  the lane's bound
-- ARGV[3]  the list's TTL, ms (a pool whose workers are all gone does not keep it for ever)
--
-- Returns the lane's length after the push, or -1 when it was full.
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
