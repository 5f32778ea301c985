#!lua flags=allow-oom
-- PUBLISH_ROUTING (`ssw routes apply|rollback`, the route guard, a gateway restoring what
-- Redis lost): makes a routing document the version in force, compare-and-swap.
--
-- Versions count up from 1 (0: none published; gateways use their files' settings). Each
-- gateway polls KEYS[1] and, when it changed, reads the document from KEYS[2].
--
-- KEYS[1]  P:{routing}:version    integer: the version in force
-- KEYS[2]  P:{routing}:versions   hash: version → document (JSON, opaque here)
-- ARGV[1]  the version the document was based on: published only if it is still in force
-- ARGV[2]  the document
-- ARGV[3]  most versions kept (older ones are deleted; `ssw routes history` lists the rest)
-- ARGV[4]  restore: '' to publish a new version; else the number of a version a gateway holds
--          and Redis lost (restarted empty): written under that number only while Redis has
--          no version at all, so the numbering goes on where it was
--
-- Returns {1, version published} or {0, version in force} (the CAS failed).
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[4] ~= '' then
  if current ~= 0 then return {0, current} end
  redis.call('SET', KEYS[1], ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[2])
  return {1, tonumber(ARGV[4])}
end
if current ~= tonumber(ARGV[1]) then return {0, current} end
local version = current + 1
redis.call('SET', KEYS[1], version)
redis.call('HSET', KEYS[2], version, ARGV[2])
local oldest = version - tonumber(ARGV[3])
if oldest >= 1 then
  -- Every version before `oldest + 1` is gone once the one just before it is: one per call.
  redis.call('HDEL', KEYS[2], oldest)
end
return {1, version}
