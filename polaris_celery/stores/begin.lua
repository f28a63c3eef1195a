-- Claim a dispatched builder for one attempt and load what it needs, in one round trip.
-- KEYS: state hash, data hash, lease hash, run hash (run results and transients), and on a
--       single node the instance's index bucket (a cluster touches it apart: other slot).
-- ARGV: lease field, token, lease value when running, claim id, incarnation, lease deadline,
--       index member, #data names, #state fields, #existence checks, '1': every state field
--       (HGETALL, for a commit that will settle its run) instead of those named, data names...,
--       state fields..., data names whose existence is asked..., run names...
-- It also reads what the attempt's commit will most likely need (reads.py), so that a commit
-- with nothing else changed meanwhile is decided from this reply and costs one round trip.
-- The claim moves the lease from queued ("token|q|deadline|resends") to running
-- ("token|r|deadline|claim") and brings the instance's index entry forward to the running
-- lease's deadline, so a crashed attempt is looked at when its lease ends. Asked again with the
-- same claim id (its reply was lost), it answers again; a second delivery of the message
-- (another claim), one for an attempt that was superseded, or one of an earlier incarnation is
-- answered 'dup', 'stale' or 'gone' and runs nothing.
if (redis.call('HGET', KEYS[1], 'inc') or '') ~= ARGV[5] then return {'gone'} end
local cur = redis.call('HGET', KEYS[3], ARGV[1])
if not cur then return {'gone'} end
local tok, st, _, tag = string.match(cur, '^(%d+)|(%a)|([^|]*)|?(.*)$')
if tok ~= ARGV[2] then return {'stale'} end
if st == 'q' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  if #KEYS >= 5 then redis.call('ZADD', KEYS[5], 'LT', ARGV[6], ARGV[7]) end
elseif tag ~= ARGV[4] then
  return {'dup'}
end
local state = redis.call('HMGET', KEYS[1], 'v', 'doc')
local n = tonumber(ARGV[8])
local m = tonumber(ARGV[9])
local e = tonumber(ARGV[10])
local data = {}
local fields = {}
local exists = {}
local run = {}
local at = 12 + n  -- the first state field
if n > 0 then data = redis.call('HMGET', KEYS[2], unpack(ARGV, 12, 11 + n)) end
if ARGV[11] == '1' then
  fields = redis.call('HGETALL', KEYS[1])
elseif m > 0 then
  fields = redis.call('HMGET', KEYS[1], unpack(ARGV, at, at + m - 1))
end
for i = at + m, at + m + e - 1 do exists[#exists + 1] = redis.call('HEXISTS', KEYS[2], ARGV[i]) end
if #ARGV >= at + m + e then
  run = redis.call('HMGET', KEYS[4], unpack(ARGV, at + m + e, #ARGV))
end
return {'ok', state[1] or '0', state[2] or '', fields, data, run, exists}
