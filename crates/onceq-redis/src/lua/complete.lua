-- complete: KEYS[1] the record; ARGV: owner, retention_ms, result, now_ms ('' for Redis's clock).
-- The record must be in progress under owner; its claim may have expired as long as nobody took
-- it over (in-progress records outlive their claim by GRACE_MS for this).
-- Replies {'ok'} | {'not_held'} | {'corrupt'}.
local key = KEYS[1]
local owner, retention, result, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], now_ms(ARGV[4])
local value = redis.call('GET', key)
if not value then
  return { 'not_held' }
end
local record = decode(key, value, now)
if not record then
  return { 'corrupt' }
end
if record.state ~= 'p' or record.owner ~= owner then
  return { 'not_held' }
end
redis.call('SET', key, encode('c', now + retention, owner, record.fingerprint, result), 'PX', int(retention))
return { 'ok' }
