-- release: KEYS[1] the record; ARGV: owner, now_ms ('' for Redis's clock).
-- The same check as complete; the record is deleted, so the next begin acquires.
-- Replies {'ok'} | {'not_held'} | {'corrupt'}.
local key = KEYS[1]
local owner, now = ARGV[1], now_ms(ARGV[2])
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
redis.call('DEL', key)
return { 'ok' }
