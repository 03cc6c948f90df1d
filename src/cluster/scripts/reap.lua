if redis.call('EXISTS', 'wschat:instance:' .. ARGV[3]) == 1 then return 0 end
local gone = {}
for i = 5, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[3] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    gone[#gone + 1] = ARGV[i]
  end
end
if #gone == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[3])
local counts = redis.call('HGETALL', KEYS[2])
local parts = {}
local total = 0
for i = 1, #counts, 2 do
  if redis.call('EXISTS', 'wschat:instance:' .. counts[i]) == 1 then
    parts[#parts + 1] = counts[i] .. '=' .. counts[i + 1]
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[2], counts[i])
  end
end
if total == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
redis.call('SET', 'wschat:reaped:' .. ARGV[3], 1, 'EX', 3600)
for _, name in ipairs(gone) do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], log_id(KEYS[4]), 'kind', 'notice',
    'room', ARGV[2], 'event', 'leave', 'name', name, 'message', name .. ' left the chat',
    'timestamp', ARGV[4], 'instance', ARGV[3], 'member', 0, 'local', '0',
    'counts', table.concat(parts, ' '))
end
return #gone
