local done = redis.call('GET', KEYS[4])
if done then return tonumber(done) end
if not after_stored(4) then return not_after end
local known = tonumber(ARGV[12])
if tonumber(redis.call('GET', KEYS[1]) or '0') < known then
  redis.call('SET', KEYS[1], known)
end
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], id .. '-0',
  'username', ARGV[2], 'message', ARGV[3], 'timestamp', ARGV[4], 'action', ARGV[5])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[11], log_id(KEYS[3]),
  'room', ARGV[1], 'id', id, 'username', ARGV[2], 'message', ARGV[3], 'timestamp', ARGV[4],
  'action', ARGV[5], 'instance', ARGV[6], 'member', ARGV[7], 'ref', ARGV[8], 'local', ARGV[9],
  'serial', ARGV[13])
redis.call('SET', KEYS[4], id, 'EX', 600)
return id
