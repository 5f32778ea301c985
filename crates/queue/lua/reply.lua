#!lua flags=allow-oom
-- REPLY (worker): appends one reply event to its gateway's reply stream. Runs at `maxmemory`
-- too (allow-oom): a full Redis refuses new jobs, never the answers of jobs already running,
-- whose end frees their memory. Each answer is bounded (`worker.max_response_bytes`) and the
-- gateway trims what it has read.
--
-- KEYS[1]  P:{gw:<instance>}:replies  the gateway's reply stream
-- ARGV     the event's field, value pairs
--
-- Returns the entry id, or false when the stream does not exist (its gateway is gone).
return redis.call('XADD', KEYS[1], 'NOMKSTREAM', '*', unpack(ARGV))
