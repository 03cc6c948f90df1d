local holder = redis.call('GET', KEYS[1])
if holder then
  local instance, granted = string.match(holder, '^(%S+) (%d+)$')
  if instance == nil then instance, granted = holder, '0' end
  if instance ~= ARGV[1] and (ARGV[4] ~= '1' or tonumber(granted) <= tonumber(ARGV[3])) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[3], 'EX', ARGV[2])
return 1
