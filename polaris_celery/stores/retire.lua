-- Retire a workflow version unless instances are pinned to it.
-- KEYS: the version's live set, the workflow's retired set. ARGV: the version.
-- Reply: the pinned instances (nothing retired), or {} once the version is marked retired.
-- Submits that pin an instance check the retired set in the same script that adds the instance
-- to the live set (cas.lua NOTIN), so the two cannot interleave.
local live = redis.call('SMEMBERS', KEYS[1])
if #live > 0 then return live end
redis.call('SADD', KEYS[2], ARGV[1])
return {}
