if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if not after_stored(4) then return not_after end
if tonumber(ARGV[9]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[7], ARGV[9])
else
  redis.call('HDEL', KEYS[1], ARGV[7])
end
local counts = redis.call('HGETALL', KEYS[1])
local parts = {}
local total = 0
for i = 1, #counts, 2 do
  if counts[i] == ARGV[7] or redis.call('EXISTS', 'wschat:instance:' .. counts[i]) == 1 then
    parts[#parts + 1] = counts[i] .. '=' .. counts[i + 1]
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[1], counts[i])
  end
end
if total > 0 then
  redis.call('SADD', KEYS[2], ARGV[2])
else
  redis.call('SREM', KEYS[2], ARGV[2])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], log_id(KEYS[3]), 'kind', 'notice',
  'room', ARGV[2], 'event', ARGV[3], 'name', ARGV[4], 'message', ARGV[5], 'timestamp', ARGV[6],
  'instance', ARGV[7], 'member', ARGV[8], 'local', ARGV[10], 'counts', table.concat(parts, ' '),
  'serial', ARGV[11])
redis.call('SET', KEYS[4], 1, 'EX', 600)
return 1
