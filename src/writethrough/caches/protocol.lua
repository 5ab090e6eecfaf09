-- The protocol's decisions (writethrough/protocol.py), run atomically on the server.
-- KEYS[1] is the entry's key, KEYS[2] the lifetime marker of its slot (same slot: cluster-safe).
-- An entry is one string:
--   <kind><fresh><tag><version>:<rest>   kind V|T|L, fresh 1|0, tag = 16 bytes,
--                                        rest = payload (V) or token (L)
-- The marker holds the tag of the cache's current reign: set by every new connection
-- from the server's run_id and replication id (a restarted or promoted server has a new
-- pair), or made here if it is missing. An entry whose tag is not the marker's was written in an earlier
-- lifetime (restored from a snapshot, replicated to a promoted replica): it is absent.
-- So is garbage (another type, a malformed string) and an entry below ARGV[2], the
-- caller's epoch floor. Versions are decimal strings without leading zeros, compared
-- exactly (by length, then bytes): no rounding at 2^53.
-- ARGV[1] names the operation, ARGV[2] is the floor:
--   write  kind version payload ttl_ms tomb_ttl_ms token lease_ttl_ms  -> outcome
--   lease  token lease_ttl_ms               -> {"hit", entry} | {"granted"} | {"busy", lease}
--   fill   token kind fresh version payload ttl_ms                     -> 1 stored | 0 dropped
--   renew  token lease_ttl_ms                                          -> 1 renewed | 0 gone
--   set    kind version payload ttl_ms       (naive protocol only)     -> 1

local key, mkey = KEYS[1], KEYS[2]
local op, floor = ARGV[1], ARGV[2]

local function newer(a, b)  -- a > b, for decimal strings without leading zeros
  if #a ~= #b then return #a > #b end
  return a > b
end

local marker = redis.pcall('GET', mkey)
if type(marker) ~= 'string' or #marker ~= 16 then
  local t = redis.call('TIME')
  marker = string.format('t%09d%06d', tonumber(t[1]) % 1000000000, tonumber(t[2]))
  redis.call('SET', mkey, marker)
end

local raw = redis.pcall('GET', key)
local ckind, cfresh, cver, rest = nil, false, '0', ''
if type(raw) == 'string' and string.sub(raw, 3, 18) == marker then
  local k, f = string.sub(raw, 1, 1), string.sub(raw, 2, 2)
  local colon = string.find(raw, ':', 19, true)
  if colon and (k == 'V' or k == 'T' or k == 'L') and (f == '0' or f == '1') then
    local v = string.sub(raw, 19, colon - 1)
    -- a row version fits a bigint: the last 19 digits are at most 2^63 - 1
    local row_ok = #v < 19 or string.sub(v, -19) <= '9223372036854775807'
    if (v == '0' or string.find(v, '^[1-9]%d*$')) and row_ok and not newer(floor, v) then
      ckind, cfresh, cver, rest = k, f == '1', v, string.sub(raw, colon + 1)
    end
  end
end

local function put(kind, fresh, version, tail, ttl)
  redis.call('SET', key, kind .. (fresh and '1' or '0') .. marker .. version .. ':' .. tail,
    'PX', ttl)
end

if op == 'write' then
  local kind, version, payload = ARGV[3], ARGV[4], ARGV[5]
  local ttl, tomb_ttl, token, lease_ttl = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
  if token ~= '' and ckind == 'L' and rest == token then return 'leased' end
  if ckind and not newer(version, cver) then
    if ckind == 'V' or cfresh then return 'superseded' end
    return 'kept'
  end
  if kind == 'V' and cfresh then
    put('V', true, version, payload, ttl)
    return 'stored_value'
  end
  if kind == 'V' and token ~= '' then
    put('L', false, version, token, lease_ttl)
    return 'leased'
  end
  put('T', cfresh, version, '', tomb_ttl)
  return 'stored_tombstone'
end

if op == 'lease' then
  local token, lease_ttl = ARGV[3], ARGV[4]
  if not ckind then
    put('L', false, floor, token, lease_ttl)
    return {'granted'}
  end
  if ckind == 'V' then return {'hit', raw} end
  if ckind == 'T' then
    put('L', cfresh, cver, token, lease_ttl)
    return {'granted'}
  end
  if rest == token then return {'granted'} end
  return {'busy', raw}
end

if op == 'fill' then
  local token, kind, fresh, version, payload, ttl = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  if ckind == 'L' then
    if rest ~= token or newer(cver, version) then return 0 end
  elseif not (ckind == 'V' and kind == 'V' and newer(version, cver)) then
    return 0
  end
  put(kind, fresh == '1', version, payload, ttl)
  return 1
end

if op == 'renew' then
  if ckind == 'L' and rest == ARGV[3] then
    redis.call('PEXPIRE', key, ARGV[4])
    return 1
  end
  return 0
end

if op == 'set' then
  put(ARGV[3], true, ARGV[4], ARGV[5], ARGV[6])
  return 1
end

return redis.error_reply('writethrough: unknown operation ' .. tostring(op))
