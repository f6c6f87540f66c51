"""The Lua scripts through which every janitor write goes, so each re-checks its job atomically.

Each script takes the leader lease as its first key and the lease token as its first
argument and returns -1 without writing when the token no longer matches: the fencing
check runs inside the same atomic step as the writes. An empty token means the caller
writes without a lease (library use and tests).
"""

from __future__ import annotations

FENCED_OUT = -1
"""What a script returns when the lease token no longer matches."""

_FENCE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
"""

DELETE_TERMINAL_JOBS = (
    _FENCE
    + """
-- Deletes a batch of terminal jobs with everything that belongs to them, each only if
-- it is still exactly as the janitor saw it when it planned the delete.
-- ARGV: 1 token, 2 now, 3 job count, then per job:
--   nside, nexec, nmembers, id, statuses ('|failed|stopped|'), origin, ended_at,
--   registry score, dependents count, has group ('1'/'0'), members...
-- KEYS: 1 lease, then per job: job hash, registry, started registry, dependents set,
--   group set (a dummy when no group), side keys (nside), execution hashes (nexec).
local now = tonumber(ARGV[2])
local k, a = 2, 4
local out = {}
for j = 1, tonumber(ARGV[3]) do
  local job, registry, started, dependents, group = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local nside, nexec, nmembers = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local id, statuses, origin = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local ended_at, score, ndeps, has_group = ARGV[a + 6], ARGV[a + 7], tonumber(ARGV[a + 8]), ARGV[a + 9]
  local side0, exec0, member0 = k + 5, k + 5 + nside, a + 10
  local ok = 1
  local h = redis.call('HMGET', job, 'status', 'origin', 'ended_at')
  if not h[1] or not string.find(statuses, '|' .. h[1] .. '|', 1, true) then ok = 0
  elseif h[2] ~= origin or (h[3] or '') ~= ended_at then ok = 0
  elseif redis.call('ZSCORE', registry, id) ~= score then ok = 0
  elseif redis.call('SCARD', dependents) ~= ndeps then ok = 0
  end
  if ok == 1 then
    for m = member0, member0 + nmembers - 1 do
      local s = redis.call('ZSCORE', started, ARGV[m])
      if s and (tonumber(s) == nil or tonumber(s) > now) then ok = 0 end
    end
    for x = exec0, exec0 + nexec - 1 do
      if redis.call('EXISTS', KEYS[x]) == 1 then ok = 0 end
    end
  end
  if ok == 1 then
    redis.call('ZREM', registry, id)
    for m = member0, member0 + nmembers - 1 do redis.call('ZREM', started, ARGV[m]) end
    redis.call('UNLINK', job, dependents)
    for x = side0, side0 + nside - 1 do redis.call('UNLINK', KEYS[x]) end
    if has_group == '1' then redis.call('SREM', group, id) end
  end
  out[j] = ok
  k = k + 5 + nside + nexec
  a = a + 10 + nmembers
end
return out
"""
)
