"""Which server of a pool holds a key's caches: the owner table ``choose`` routes by.

``MemoryOwners``: this process's own table (one gateway replica). ``RedisOwners``: one table every
replica shares, so a conversation whose turns reach different replicas still reaches one engine. Entries
expire ``ttl_s`` after their last use (an engine's caches forget old keys too). How many keys each server
owns (for placing new keys) is counted locally over the last ``capacity`` claims: each replica spreads the
keys it places. A Redis failure never fails a request: the key is then routed as if new.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from typing import Any, Protocol

log = logging.getLogger("vlm_gateway.routing")

CAPACITY = 65_536
TTL_S = 3600


class Owners(Protocol):
    async def owner(self, key: str) -> str | None:
        """The server that owns ``key`` (None: no one)."""
        ...

    async def claim(self, key: str, server: str, *, replace: bool) -> str:
        """Make ``server`` the owner of ``key`` and return the owner: another replica's server when it
        claimed the key first and ``replace`` is False (a new key), else ``server`` (a key whose owner left)."""
        ...

    def owned(self, server: str) -> int:
        """How many of the keys placed lately ``server`` owns."""
        ...


class _Claims:
    """The last ``capacity`` placements, counted by server."""

    def __init__(self, capacity: int) -> None:
        self._recent: deque[str] = deque()
        self._capacity = capacity
        self.counts: Counter[str] = Counter()

    def add(self, server: str) -> None:
        self._recent.append(server)
        self.counts[server] += 1
        if len(self._recent) > self._capacity:
            self.counts[self._recent.popleft()] -= 1


class MemoryOwners:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._table: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity
        self._counts: Counter[str] = Counter()

    async def owner(self, key: str) -> str | None:
        server = self._table.get(key)
        if server is not None:
            self._table.move_to_end(key)
        return server

    async def claim(self, key: str, server: str, *, replace: bool) -> str:
        current = self._table.get(key)
        if current is not None and not replace:
            return current
        if current is not None:
            self._counts[current] -= 1
        self._table[key] = server
        self._table.move_to_end(key)
        self._counts[server] += 1
        if len(self._table) > self._capacity:
            _, evicted = self._table.popitem(last=False)
            self._counts[evicted] -= 1
        return server

    def owned(self, server: str) -> int:
        return self._counts[server]


class RedisOwners:
    """Keys ``{prefix}{key}`` → server URL, with a TTL renewed on every read (``GETEX``)."""

    def __init__(self, redis: Any, prefix: str, ttl_s: int = TTL_S, capacity: int = CAPACITY) -> None:
        self._redis, self._prefix, self._ttl_s = redis, prefix, ttl_s
        self._claims = _Claims(capacity)

    async def owner(self, key: str) -> str | None:
        try:
            value = await self._redis.getex(self._prefix + key, ex=self._ttl_s)
        except Exception as exc:  # noqa: BLE001 - routing without the table beats failing the request
            log.warning("routing table unavailable (%s): routing as a new key", exc)
            return None
        return value.decode() if isinstance(value, bytes) else value

    async def claim(self, key: str, server: str, *, replace: bool) -> str:
        try:
            if await self._redis.set(self._prefix + key, server, ex=self._ttl_s, nx=not replace) or replace:
                self._claims.add(server)
                return server
            winner = await self._redis.get(self._prefix + key)
        except Exception as exc:  # noqa: BLE001
            log.warning("routing table unavailable (%s): not recording the key's server", exc)
            return server
        if winner is None:
            return server
        return winner.decode() if isinstance(winner, bytes) else winner

    def owned(self, server: str) -> int:
        return self._claims.counts[server]
