"""Shared state for API keys and rate limits: one protocol, an in-process and a Redis backend.

``state_backend(redis, prefix)`` picks the backend: ``RedisState`` when the app has a Redis client
(several replicas share it), else ``MemoryState`` (a single process). ``redis_client(url)`` is that
client, made once per process by the app and shared by everything that keeps state in Redis.
"""

from __future__ import annotations

from typing import Any

from vlm_gateway.state.memory import MemoryState
from vlm_gateway.state.protocol import SlotGrant, StateBackend, WindowResult
from vlm_gateway.state.redis import RedisState

__all__ = ["MemoryState", "RedisState", "SlotGrant", "StateBackend", "WindowResult", "redis_client",
           "state_backend"]

# Connections one gateway process opens to Redis at most. A command that finds them all busy waits for one
# to come free: redis-py's default pool instead fails its 101st concurrent command (MaxConnectionsError),
# which under load (a 2-core box at 1 600 req/s) turned requests into 503s.
REDIS_MAX_CONNECTIONS = 256


def redis_client(url: str) -> Any:
    """An asyncio Redis client for ``url`` whose pool waits for a free connection rather than failing.

    Replies are waited for up to 30 s (redis-py's own default is 5): a loop that stood still longer than
    that would time out replies that had arrived. The limiter bounds its calls itself (state_timeout_s,
    ``limits.rate.bounded``); blocking job reads are shorter than this."""
    from redis.asyncio import BlockingConnectionPool, Redis

    pool = BlockingConnectionPool.from_url(url, max_connections=REDIS_MAX_CONNECTIONS, timeout=30,
                                           socket_timeout=30, socket_connect_timeout=5)
    return Redis.from_pool(pool)


def state_backend(redis: Any = None, prefix: str = "vlm:", url: str | None = None) -> StateBackend:
    """``RedisState(redis, prefix, url)`` when a client is given, else a fresh ``MemoryState``."""
    return MemoryState() if redis is None else RedisState(redis, prefix, url)
