-- Everything the simulator's checks read, in one round trip, as one JSON document.
-- The harness owns this server: every key in it belongs to the schedule being checked.
-- The index and the version sets are read in either shape: one key (pc:index,
-- pc:live:<wf>:<v>) or sharded in buckets (pc:{index:<b>}, pc:{live:<wf>:<v>:<b>}).
-- ARGV[1] = key prefix, ARGV[2] = workflow; then per instance: id, the first and the last
-- log entry ids already seen ('' for none). The log is read from after the last entry seen,
-- or whole when its first entry changed (the stream was deleted and created again).
local function map(flat)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end
local function starts(k, prefix) return string.sub(k, 1, #prefix) == prefix end
local out = {keys = {}, instances = {}, index = {}, live = {}}
local p = ARGV[1]
for _, k in ipairs(redis.call('KEYS', '*')) do
  out.keys[k] = {redis.call('PEXPIRETIME', k), redis.call('PTTL', k)}
  if k == p .. ':index' or starts(k, p .. ':{index:') then
    local z = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
    for i = 1, #z, 2 do out.index[z[i]] = z[i + 1] end
  elseif starts(k, p .. ':live:') or starts(k, p .. ':{live:') then
    out.live[k] = redis.call('SMEMBERS', k)
  end
end
for i = 3, #ARGV, 3 do
  local tag = ARGV[1] .. ':{' .. ARGV[2] .. '/' .. ARGV[i] .. '}:'
  local head = redis.call('XRANGE', tag .. 'log', '-', '+', 'COUNT', 1)
  local first = head[1] and head[1][1] or ''
  local log = {}
  if first ~= '' then
    local from = '-'
    if first == ARGV[i + 1] and ARGV[i + 2] ~= '' then from = '(' .. ARGV[i + 2] end
    for _, e in ipairs(redis.call('XRANGE', tag .. 'log', from, '+')) do
      log[#log + 1] = {e[1], map(e[2])}
    end
  end
  out.instances[ARGV[i]] = {
    state = map(redis.call('HGETALL', tag .. 'state')),
    lease = map(redis.call('HGETALL', tag .. 'lease')),
    data = map(redis.call('HGETALL', tag .. 'data')),
    first = first,
    log = log,
  }
end
return cjson.encode(out)
