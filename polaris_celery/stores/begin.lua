-- Claim a dispatched builder for one attempt and load what it needs, in one round trip.
-- KEYS: state hash, data hash, lease hash, run hash (run results and transients).
-- ARGV: lease field, token, lease value when running, #data names, data names..., run names...
-- The claim moves the lease from queued ("token|q|deadline") to running ("token|r|deadline");
-- a second delivery of the same message, or one for an attempt that was superseded, is
-- answered 'dup' or 'stale' and runs nothing.
local cur = redis.call('HGET', KEYS[3], ARGV[1])
if not cur then return {'gone'} end
local tok, st = string.match(cur, '^(%d+)|(%a)|')
if tok ~= ARGV[2] then return {'stale'} end
if st ~= 'q' then return {'dup'} end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'v', 'doc')
local n = tonumber(ARGV[4])
local data = {}
local run = {}
if n > 0 then data = redis.call('HMGET', KEYS[2], unpack(ARGV, 5, 4 + n)) end
if #ARGV > 4 + n then run = redis.call('HMGET', KEYS[4], unpack(ARGV, 5 + n, #ARGV)) end
return {'ok', state[1] or '0', state[2] or '', redis.call('HKEYS', KEYS[2]), data, run}
