"""The Lua of admission bookkeeping in Redis: leases on slots, wake-ups, renewals, the peak.

No rule lives here. The scripts count leases against a cap that Python decided (the adaptive
cap is read from the `cap` field of the adaptive state's hash, which `pipeline.limits.aimd`
writes). Each is one atomic step, and each reads the clock with Redis `TIME`, so the hosts'
clocks do not matter.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Keep the lease set alive at least as long as its newest lease, whatever other workers chose.
_KEEP_LEASES = """
local function keep_leases(key, lease_ms)
  if redis.call('PTTL', key) < lease_ms then redis.call('PEXPIRE', key, lease_ms) end
end
local function note_peak(leases, peak, ttl_ms)
  local held = redis.call('ZCARD', leases)
  if held > (tonumber(redis.call('GET', peak)) or 0) then
    redis.call('SET', peak, held, 'PX', ttl_ms)
  end
  return held
end
"""

# KEYS: leases, adaptive state, peak. ARGV: token, lease_ms, ceiling, adaptive (0|1), the cap
# when no adaptive state is stored, state_ttl_ms. Returns {admitted (0|1), held, cap}.
# Idempotent for a token already held, so a retry after a lost reply cannot take a second slot.
ACQUIRE = (
    _NOW
    + _KEEP_LEASES
    + """
local lease_ms = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[3])
if ARGV[4] == '1' then
  local stored = tonumber(redis.call('HGET', KEYS[2], 'cap')) or tonumber(ARGV[5])
  cap = math.max(1, math.min(stored, cap))
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[1])
  keep_leases(KEYS[1], lease_ms)
  return {1, redis.call('ZCARD', KEYS[1]), cap}
end
local held = redis.call('ZCARD', KEYS[1])
if held >= cap then return {0, held, cap} end
redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[1])
keep_leases(KEYS[1], lease_ms)
held = note_peak(KEYS[1], KEYS[3], ARGV[6])
return {1, held, cap}
"""
)

# KEYS: leases, peak. ARGV: token, lease_ms, state_ttl_ms. Returns 1 when the lease had been
# lost (expired, or Redis restarted) and was put back: the request is really in flight, so it
# counts against the cap again even if that briefly overfills it.
RENEW = (
    _NOW
    + _KEEP_LEASES
    + """
local lease_ms = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local restored = redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[1])
keep_leases(KEYS[1], lease_ms)
if restored == 1 then note_peak(KEYS[1], KEYS[2], ARGV[3]) end
return restored
"""
)

# KEYS: leases, wake. ARGV: token, wake_keep, wake_ttl_ms. Returns 1 when the token was held.
RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: leases. Returns the number of unexpired leases.
IN_FLIGHT = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)
