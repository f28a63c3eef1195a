-- Compare-and-set of one workflow instance, then a list of operations, atomically.
-- KEYS[1] = the instance's state hash (fields v, inc, doc, runs' fields); KEYS[2] = its data hash.
-- ARGV[1] = the version and ARGV[2] the incarnation the caller computed its writes from.
-- ARGV[3..] = ops, each: name, key index, arg count, args...
--   EXPECT k field value   abort (as a conflict) unless HGET k field == value ('' = absent)
--   ONCE k field value     written (HSET) with the rest; on a conflict, if k already holds it,
--                          the caller's write was applied before (its reply was lost): {2, v}
--   HMGET / HKEYS / HGETALL  reads whose replies are returned, in order (after the writes)
--   HEXISTSM k f1 f2 ...   a read: HEXISTS of each field, as a list of 0/1
--   anything in WRITES     executed as is
-- Reply: {1, version, reads} when applied, {0, version} on a conflict (the caller reads again
-- what its decision needs: view.lua).
-- Every decision was made by the caller in Python from the state at ARGV[1..2]; this script
-- only refuses to apply it to any other state. That is the fencing: a stale attempt, a second
-- reconciler, a re-delivered message or anything of an earlier incarnation computed from an
-- older state and is turned away.
local WRITES = {HSET=1, HDEL=1, DEL=1, EXPIRE=1, PERSIST=1, RPUSH=1, LPUSH=1, LTRIM=1,
                ZADD=1, ZREM=1, XADD=1, INCR=1, SADD=1, SREM=1}
local ops = {}
local i = 3
while i <= #ARGV do
  local c = tonumber(ARGV[i + 2])
  ops[#ops + 1] = {ARGV[i], KEYS[tonumber(ARGV[i + 1])], {unpack(ARGV, i + 3, i + 2 + c)}}
  i = i + 3 + c
end
local st = redis.call('HMGET', KEYS[1], 'v', 'inc')
local v = st[1] or '0'
local function conflict()
  for _, op in ipairs(ops) do
    if op[1] == 'ONCE' and redis.call('HGET', op[2], op[3][1]) == op[3][2] then
      return {2, v}
    end
  end
  return {0, v}
end
if v ~= ARGV[1] or (st[2] or '') ~= ARGV[2] then return conflict() end
for _, op in ipairs(ops) do
  if op[1] == 'EXPECT' then
    if (redis.call('HGET', op[2], op[3][1]) or '') ~= op[3][2] then return conflict() end
  end
end
for _, op in ipairs(ops) do
  local name = op[1]
  if name == 'ONCE' then
    redis.call('HSET', op[2], op[3][1], op[3][2])
  elseif WRITES[name] then
    redis.call(name, op[2], unpack(op[3]))
  elseif name ~= 'EXPECT' and name ~= 'HMGET' and name ~= 'HKEYS' and name ~= 'HGETALL'
      and name ~= 'HEXISTSM' then
    return redis.error_reply('polaris cas: operation not allowed: ' .. name)
  end
end
-- Reads come after every write: they see the state as this step leaves it.
local reads = {}
for _, op in ipairs(ops) do
  local name = op[1]
  if name == 'HMGET' or name == 'HKEYS' or name == 'HGETALL' then
    reads[#reads + 1] = redis.call(name, op[2], unpack(op[3]))
  elseif name == 'HEXISTSM' then
    local got = {}
    for _, f in ipairs(op[3]) do got[#got + 1] = redis.call('HEXISTS', op[2], f) end
    reads[#reads + 1] = got
  end
end
return {1, v, reads}
