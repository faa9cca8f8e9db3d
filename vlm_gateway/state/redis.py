"""``RedisState``: the StateBackend shared by every replica, one atomic Lua script per primitive.

Times come from the Redis server's clock (``TIME``), never the replicas', so replicas with skewed
clocks still agree. The client (``redis.asyncio.Redis``) is created once by the app and handed in; this
module never opens or closes connections. Works with ``decode_responses`` on or off.

Layout (every key under ``prefix``): a window is a sorted set ``{name}`` of ``<random>:<cost>``
members scored by the time they were recorded (µs) plus a running sum ``{name}:sum`` (the braces keep
both in one cluster slot); a slot set is a sorted set of holders scored by lease expiry (µs); a hash is
a Redis hash; a value is a string with its TTL (``SET … PX``). Every key carries a TTL, so abandoned
state disappears on its own.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from vlm_gateway.state.protocol import SlotGrant, WindowResult

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# KEYS: log, sum. ARGV: window_us, limit, cost, mode ('hit' | 'peek' | 'add'), member prefix.
# Returns {allowed, used, reset_us, retry_after_us}.
_WINDOW = _NOW + """
local window, limit, cost, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local used = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if #old > 0 then
    for _, m in ipairs(old) do used = used - tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
    redis.call('SET', KEYS[2], used, 'KEEPTTL')
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  used = 0
  redis.call('DEL', KEYS[2])
end
local need = cost
if mode == 'peek' then need = 1 end
local allowed = mode == 'add' or used + need <= limit
if allowed and mode ~= 'peek' and cost > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. ARGV[3])
  used = used + cost
  redis.call('SET', KEYS[2], used)
  local ttl_ms = math.ceil(window / 1000) + 1000
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
end
local reset = 0
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #newest > 0 then reset = tonumber(newest[2]) + window - now end
local retry = 0
if not allowed then
  retry = window
  local freed, start, done = 0, 0, false
  while not done do
    local batch = redis.call('ZRANGE', KEYS[1], start, start + 99, 'WITHSCORES')
    if #batch == 0 then break end
    for i = 1, #batch, 2 do
      freed = freed + tonumber(string.match(batch[i], ':(%d+)$'))
      if used - freed + need <= limit then
        retry = tonumber(batch[i + 1]) + window - now
        done = true
        break
      end
    end
    start = start + 100
  end
end
return {allowed and 1 or 0, used, reset, retry}
"""

# Drop expired leases, then (re)set the expiry of the key to its latest lease.
_PRUNE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function keep_key()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if #last > 0 then redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2]) / 1000) + 1) end
end
"""

# KEYS: slots. ARGV: limit, lease_ttl_us, holder. Returns {lease expiry µs (0: refused), now µs, held}.
_ACQUIRE = _PRUNE + """
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return {0, now, redis.call('ZCARD', KEYS[1])}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
keep_key()
return {now + tonumber(ARGV[2]), now, redis.call('ZCARD', KEYS[1])}
"""

# KEYS: slots. ARGV: lease_ttl_us, holder... Extends the leases that still exist (never re-creates
# one: a released or lapsed slot stays gone). Returns {now µs, expiry µs or 0 per holder}.
_RENEW = _PRUNE + """
local out = {now}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
    out[i] = now + tonumber(ARGV[1])
  else
    out[i] = 0
  end
end
keep_key()
return out
"""


# KEYS: slots. Returns the number of live leases.
_IN_USE = _PRUNE + """
return redis.call('ZCARD', KEYS[1])
"""


def _us(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1_000_000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


_SYNC_KWARGS = ("host", "port", "db", "username", "password", "path", "socket_timeout", "socket_connect_timeout")


class RedisState:
    """StateBackend on a shared Redis. ``prefix`` namespaces every key (one gateway deployment).

    ``redis`` is the app's asyncio client. Lease renewals run on the limiter's own thread through a
    small blocking client (``url``, else the async client's address), so that a stalled event loop
    never lets a held slot lapse.
    """

    def __init__(self, redis: Any, prefix: str = "vlm:", url: str | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self._url = url
        self._sync: Any = None
        self._window = redis.register_script(_WINDOW)
        self._acquire = redis.register_script(_ACQUIRE)
        self._in_use = redis.register_script(_IN_USE)

    def _blocking(self) -> Any:
        if self._sync is None:
            import redis as redis_sync

            if self._url:
                self._sync = redis_sync.Redis.from_url(self._url, socket_timeout=5)
            else:
                kwargs = self.redis.connection_pool.connection_kwargs
                self._sync = redis_sync.Redis(**{k: kwargs[k] for k in _SYNC_KWARGS if k in kwargs})
            self._renew = self._sync.register_script(_RENEW)
        return self._sync

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _window_keys(self, key: str) -> list[str]:
        base = f"{self.prefix}{{{key}}}"
        return [base, base + ":sum"]

    async def _run_window(self, key: str, window_s: float, limit: int, cost: int, mode: str) -> WindowResult:
        allowed, used, reset_us, retry_us = await self._window(
            keys=self._window_keys(key), args=[_us(window_s), limit, int(cost), mode, uuid.uuid4().hex])
        return WindowResult(bool(allowed), int(used), limit, max(0, int(reset_us)) / 1e6,
                            max(0, int(retry_us)) / 1e6)

    async def hit(self, key: str, window_s: float, limit: int, cost: int = 1) -> WindowResult:
        return await self._run_window(key, window_s, limit, cost, "hit")

    async def peek(self, key: str, window_s: float, limit: int) -> WindowResult:
        return await self._run_window(key, window_s, limit, 0, "peek")

    async def add(self, key: str, window_s: float, amount: int) -> None:
        if amount > 0:
            await self._run_window(key, window_s, 0, amount, "add")

    async def acquire_slot(self, key: str, limit: int, lease_ttl_s: float, holder: str) -> SlotGrant:
        expiry, now, held = await self._acquire(keys=[self._key(key)], args=[limit, _us(lease_ttl_s), holder])
        return SlotGrant(int(expiry) > 0, int(held), (int(expiry) - int(now)) / 1e6 if int(expiry) else 0.0)

    def renew_slots_blocking(self, key: str, holders: list[str], lease_ttl_s: float) -> list[bool]:
        self._blocking()
        now, *expiries = self._renew(keys=[self._key(key)], args=[_us(lease_ttl_s), *holders])
        return [int(e) > 0 for e in expiries]

    async def release_slot(self, key: str, holder: str) -> bool:
        return bool(await self.redis.zrem(self._key(key), holder))

    def close_blocking(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def slots_in_use(self, key: str) -> int:
        return int(await self._in_use(keys=[self._key(key)]))

    async def hash_get(self, key: str, field: str) -> bytes | None:
        value = await self.redis.hget(self._key(key), field)
        return None if value is None else _bytes(value)

    async def hash_set(self, key: str, field: str, value: bytes) -> None:
        await self.redis.hset(self._key(key), field, value)

    async def hash_all(self, key: str) -> dict[str, bytes]:
        return {_text(k): _bytes(v) for k, v in (await self.redis.hgetall(self._key(key))).items()}

    async def hash_len(self, key: str) -> int:
        return int(await self.redis.hlen(self._key(key)))

    async def value_get(self, key: str) -> bytes | None:
        value = await self.redis.get(self._key(key))
        return None if value is None else _bytes(value)

    async def value_set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.redis.set(self._key(key), value, px=max(1, math.ceil(ttl_s * 1000)))

    async def value_delete(self, key: str) -> bool:
        return bool(await self.redis.delete(self._key(key)))
