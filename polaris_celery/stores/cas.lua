-- Compare-and-set of one workflow instance, then a list of operations, atomically.
-- KEYS[1] = the instance's state hash (fields v, inc, doc, runs' fields); KEYS[2] = its data hash.
-- ARGV[1] = the version ('' : not fenced on it) and ARGV[2] the incarnation the caller
-- computed its writes from.
-- ARGV[3..] = ops, each: name, key index, arg count, args...
--   EXPECT k field value   abort (as a conflict) unless HGET k field == value ('' = absent)
--   ONCE k field value     written (HSET) with the rest; on a conflict, if k already holds it,
--                          the caller's write was applied before (its reply was lost): {2, v}
--   QUIET k header read dA dP pfield [w dW]...   a run's header whose counters this step
--                          moves by deltas (active by dA, produced by dP, waiting[w] by dW),
--                          so that sibling commits need not conflict: aborts unless the
--                          header's other parts are as `read` (the JSON the step read: the same
--                          waiting builders, no error, target or close, the same pass) and each
--                          counter moved stays above 0, as the step decided from `read`; then
--                          writes the header, and pfield (if not '') := the new produced count
--                          (the datum's order). See machine.Machine.seal_quiet.
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
                ZADD=1, ZREM=1, XADD=1, INCR=1, HINCRBY=1, SADD=1, SREM=1}
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
if (ARGV[1] ~= '' and v ~= ARGV[1]) or (st[2] or '') ~= ARGV[2] then return conflict() end
-- A QUIET header as it will be written, or nil: the step's decision no longer holds.
local function quiet(key, a)
  local cur = redis.call('HGET', key, a[1])
  if not cur then return nil end
  local h, r = cjson.decode(cur), cjson.decode(a[2])
  if h.error or h.target_hit or h.closed or (h.passed or 0) ~= (r.passed or 0) then return nil end
  local hw, rw = h.waiting or {}, r.waiting or {}
  for w in pairs(hw) do if rw[w] == nil then return nil end end
  for w in pairs(rw) do if hw[w] == nil then return nil end end
  h.active = h.active + tonumber(a[3])
  h.produced = h.produced + tonumber(a[4])
  if h.active <= 0 then return nil end
  for i = 6, #a, 2 do
    hw[a[i]] = hw[a[i]] + tonumber(a[i + 1])
    if hw[a[i]] <= 0 then return nil end
  end
  return h
end
local headers = {}
for i, op in ipairs(ops) do
  if op[1] == 'EXPECT' then
    if (redis.call('HGET', op[2], op[3][1]) or '') ~= op[3][2] then return conflict() end
  elseif op[1] == 'QUIET' then
    headers[i] = quiet(op[2], op[3])
    if not headers[i] then return conflict() end
  end
end
for i, op in ipairs(ops) do
  local name = op[1]
  if name == 'QUIET' then
    redis.call('HSET', op[2], op[3][1], cjson.encode(headers[i]))
    if op[3][5] ~= '' then redis.call('HSET', op[2], op[3][5], headers[i].produced) end
  elseif name == 'ONCE' then
    redis.call('HSET', op[2], op[3][1], op[3][2])
  elseif WRITES[name] then
    redis.call(name, op[2], unpack(op[3]))
  elseif name ~= 'EXPECT' and name ~= 'HMGET' and name ~= 'HKEYS' and name ~= 'HGETALL'
      and name ~= 'HEXISTSM' and name ~= 'QUIET' then
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
