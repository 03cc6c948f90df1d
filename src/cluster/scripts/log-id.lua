redis.replicate_commands()
local function log_id(log)
  if redis.call('EXISTS', log) == 1 then return '*' end
  local now = redis.call('TIME')
  return (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + 1) .. '-0'
end
local function after_stored(keys)
  return #KEYS <= keys or redis.call('EXISTS', KEYS[keys + 1]) == 1
end
local not_after = {err = 'WSCHATAFTER the post before this one was not stored'}
