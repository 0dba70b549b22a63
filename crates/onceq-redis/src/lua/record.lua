-- The record of one idempotency key: one string value under the key `<prefix>{<key>}`.
-- Its format (record.rs encodes the same for the plain acquire path; keep the two in step):
--
--   '1|' state '|' until_ms '|' owner_len '|' fingerprint_len '|' owner fingerprint result
--
-- state is 'p' (in progress) or 'c' (completed); until_ms is the claim's expiry ('p') or the end of
-- the retention ('c'), in milliseconds since the epoch; fingerprint_len is empty when the
-- request gave no fingerprint; result is the rest of the value (empty while in progress).
-- An empty until_ms appears only on a record written by the plain acquire path judged by Redis's
-- clock (SET NX PX ttl + GRACE_MS): its claim ends GRACE_MS before the key itself does.
-- GRACE_MS is prepended by scripts.rs.

-- The store's one clock: the caller's test clock when given, else Redis's own.
local function now_ms(given)
  if given ~= '' then
    return tonumber(given)
  end
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function int(n)
  return string.format('%.0f', n)
end

-- The record stored under key as a table, or nil when the value is not a record.
local function decode(key, value, now)
  local state, until_ms, owner_len, fingerprint_len, at =
    string.match(value, '^1|([pc])|(%d*)|(%d+)|(%d*)|()')
  if not state then
    return nil
  end
  owner_len = tonumber(owner_len)
  local record = { state = state, owner = string.sub(value, at, at + owner_len - 1), fingerprint = false }
  at = at + owner_len
  if fingerprint_len ~= '' then
    fingerprint_len = tonumber(fingerprint_len)
    record.fingerprint = string.sub(value, at, at + fingerprint_len - 1)
    at = at + fingerprint_len
  end
  if string.len(value) < at - 1 then
    return nil
  end
  record.result = string.sub(value, at)
  if until_ms ~= '' then
    record.until_ms = tonumber(until_ms)
  elseif state == 'p' then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      return nil
    end
    record.until_ms = now + ttl - GRACE_MS
  else
    return nil
  end
  return record
end

local function encode(state, until_ms, owner, fingerprint, result)
  local fingerprint_len = ''
  if fingerprint then
    fingerprint_len = tostring(string.len(fingerprint))
  else
    fingerprint = ''
  end
  return '1|' .. state .. '|' .. int(until_ms) .. '|' .. tostring(string.len(owner)) .. '|' .. fingerprint_len .. '|'
    .. owner .. fingerprint .. result
end
