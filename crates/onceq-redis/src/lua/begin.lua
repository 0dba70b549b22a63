-- begin: KEYS[1] the record; ARGV: owner, ttl_ms, fingerprint ('' for none), now_ms ('' for
-- Redis's clock). Runs when the plain acquire path (SET NX) found the key taken.
-- Replies {'acquired'} | {'in_progress', owner, until_ms} | {'completed', result}
--       | {'fingerprint_mismatch'} | {'corrupt'}.
local key = KEYS[1]
local owner, ttl, fingerprint, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], now_ms(ARGV[4])
if fingerprint == '' then
  fingerprint = false
end
local value = redis.call('GET', key)
if value then
  local record = decode(key, value, now)
  if not record then
    return { 'corrupt' }
  end
  -- A record whose until_ms has passed is dead: an abandoned claim or an expired result.
  if record.until_ms > now then
    if record.fingerprint and fingerprint and record.fingerprint ~= fingerprint then
      return { 'fingerprint_mismatch' }
    end
    if record.state == 'c' then
      return { 'completed', record.result }
    end
    if record.owner ~= owner then
      return { 'in_progress', record.owner, int(record.until_ms) }
    end
    -- The holder again: it keeps the key, and the fingerprint it claimed with.
    fingerprint = fingerprint or record.fingerprint
  end
end
redis.call('SET', key, encode('p', now + ttl, owner, fingerprint, ''), 'PX', int(ttl + GRACE_MS))
return { 'acquired' }
