-- Read what one decision needs of an instance, at one version, in one round trip.
-- KEYS[1] = state hash, KEYS[2] = data hash, KEYS[3] = deltas hash.
-- ARGV[1] = '1': every field of the state hash; ARGV[2] = '1': every data name;
-- ARGV[3] = a delta id to look up ('' none); ARGV[4] = how many state fields follow;
-- then those state fields, then data names whose existence is asked.
-- A decision reads only the fields it needs (a run's header, a builder's token, ...), so a
-- commit costs the same in an instance with 10 or 1,000 builders in flight; the version read
-- here is what its cas.lua is fenced on.
local st = redis.call('HMGET', KEYS[1], 'v', 'inc', 'doc')
local n = tonumber(ARGV[4])
local fields = {}
if ARGV[1] == '1' then
  fields = redis.call('HGETALL', KEYS[1])
elseif n > 0 then
  fields = redis.call('HMGET', KEYS[1], unpack(ARGV, 5, 4 + n))
end
local exists = {}
for i = 5 + n, #ARGV do exists[#exists + 1] = redis.call('HEXISTS', KEYS[2], ARGV[i]) end
local names = {}
if ARGV[2] == '1' then names = redis.call('HKEYS', KEYS[2]) end
local seen = ''
if ARGV[3] ~= '' then seen = redis.call('HGET', KEYS[3], ARGV[3]) or '' end
return {st[1] or '0', st[2] or '', st[3] or '', fields, exists, names, seen}
