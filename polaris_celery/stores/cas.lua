-- Compare-and-set of one workflow instance, then a list of writes, atomically.
-- KEYS[1] = the instance's state hash (fields v, doc); KEYS[2] = its data hash.
-- ARGV[1] = the version the caller computed its writes from.
-- ARGV[2..] = ops, each: name, key index, arg count, args...
--   EXPECT k field value   abort (as a conflict) unless HGET k field == value ('' = absent)
--   HMGET / HKEYS          reads whose replies are returned, in order
--   anything in WRITES     executed as is
-- Reply: {1, version, reads} when applied, {0, version, doc, data names, op} on a conflict,
-- where op is the id the last applied write stored in the state hash's `op` field: a caller
-- whose reply was lost recognises its own write by it.
-- Every decision was made by the caller in Python from the state at ARGV[1]; this script only
-- refuses to apply it to any other state. That is the fencing: a stale attempt, a second
-- reconciler or a re-delivered message computed from an older version and is turned away.
local WRITES = {HSET=1, HDEL=1, DEL=1, EXPIRE=1, PERSIST=1, RPUSH=1, LPUSH=1, LTRIM=1,
                ZADD=1, ZREM=1, XADD=1, INCR=1, SADD=1, SREM=1}
local function conflict(v)
  local st = redis.call('HMGET', KEYS[1], 'doc', 'op')
  return {0, v, st[1] or '', redis.call('HKEYS', KEYS[2]), st[2] or ''}
end
local v = redis.call('HGET', KEYS[1], 'v') or '0'
if v ~= ARGV[1] then return conflict(v) end
local ops = {}
local i = 2
while i <= #ARGV do
  local c = tonumber(ARGV[i + 2])
  ops[#ops + 1] = {ARGV[i], KEYS[tonumber(ARGV[i + 1])], {unpack(ARGV, i + 3, i + 2 + c)}}
  i = i + 3 + c
end
for _, op in ipairs(ops) do
  if op[1] == 'EXPECT' then
    local cur = redis.call('HGET', op[2], op[3][1]) or ''
    if cur ~= op[3][2] then return conflict(v) end
  end
end
local reads = {}
for _, op in ipairs(ops) do
  local name = op[1]
  if name == 'HMGET' or name == 'HKEYS' then
    reads[#reads + 1] = redis.call(name, op[2], unpack(op[3]))
  elseif WRITES[name] then
    redis.call(name, op[2], unpack(op[3]))
  elseif name ~= 'EXPECT' then
    return redis.error_reply('polaris cas: operation not allowed: ' .. name)
  end
end
return {1, v, reads}
