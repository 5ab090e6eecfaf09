-- The protocol's decisions (writethrough/protocol.py), run atomically on the server.
-- One key per call (cluster-safe). An entry is one string:
--   <kind><fresh><version>:<rest>   kind V|T|L, fresh 1|0, rest = payload (V) or token (L)
-- Versions are compared as Lua numbers: exact up to 2^53.
-- ARGV[1] names the operation:
--   write  kind version payload ttl_ms tombstone_ttl_ms on_empty -> outcome
--   lease  token lease_ttl_ms                     -> {"hit", entry} | {"granted"} | {"busy", lease}
--   fill   token kind version entry ttl_ms                       -> 1 stored | 0 dropped

local key = KEYS[1]
local op = ARGV[1]
local raw = redis.call('GET', key)
local ckind, cfresh, cver, colon = nil, false, 0, 0
if raw then
  ckind = string.sub(raw, 1, 1)
  cfresh = string.sub(raw, 2, 2) == '1'
  colon = string.find(raw, ':', 3, true)
  cver = tonumber(string.sub(raw, 3, colon - 1))
end

if op == 'write' then
  local kind, vtext, payload = ARGV[2], ARGV[3], ARGV[4]
  local version = tonumber(vtext)
  local ttl, tomb_ttl, on_empty = ARGV[5], ARGV[6], ARGV[7]
  if raw and cver >= version then
    if ckind == 'V' or cfresh then return 'superseded' end
    return 'kept'
  end
  local proven = cfresh  -- false when the key is empty
  if kind == 'V' and (proven or on_empty == 'value') then
    redis.call('SET', key, 'V1' .. vtext .. ':' .. payload, 'PX', ttl)
    return 'stored_value'
  end
  local fresh = proven
  if kind ~= 'V' and not raw and on_empty == 'value' then fresh = true end
  redis.call('SET', key, 'T' .. (fresh and '1' or '0') .. vtext .. ':', 'PX', tomb_ttl)
  return 'stored_tombstone'
end

if op == 'lease' then
  local token, lease_ttl = ARGV[2], ARGV[3]
  if not raw then
    redis.call('SET', key, 'L00:' .. token, 'PX', lease_ttl)
    return {'granted'}
  end
  if ckind == 'V' then return {'hit', raw} end
  if ckind == 'T' then
    redis.call('SET', key, 'L' .. (cfresh and '1' or '0') .. string.sub(raw, 3, colon) .. token,
      'PX', lease_ttl)
    return {'granted'}
  end
  if string.sub(raw, colon + 1) == token then return {'granted'} end
  return {'busy', raw}
end

if op == 'fill' then
  local token, kind, version, entry, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
  if not raw then return 0 end
  if ckind == 'L' then
    if string.sub(raw, colon + 1) ~= token or version < cver then return 0 end
    redis.call('SET', key, entry, 'PX', ttl)
    return 1
  end
  if ckind == 'V' and kind == 'V' and version > cver then
    redis.call('SET', key, entry, 'PX', ttl)
    return 1
  end
  return 0
end

return redis.error_reply('writethrough: unknown operation ' .. tostring(op))
