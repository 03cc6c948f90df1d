if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if not after_stored(3) then return not_after end
local holder = redis.call('GET', KEYS[3])
holder = holder and string.match(holder, '^%S+') or ''
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], log_id(KEYS[1]), 'kind', 'private',
  'room', ARGV[2], 'username', ARGV[3], 'message', ARGV[4], 'timestamp', ARGV[5],
  'action', ARGV[6], 'to', ARGV[7], 'instance', ARGV[8], 'member', ARGV[9], 'ref', ARGV[10],
  'serial', ARGV[11], 'holder', holder)
redis.call('SET', KEYS[2], 1, 'EX', 600)
return 1
