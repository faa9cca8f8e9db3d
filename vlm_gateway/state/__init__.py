"""Shared state for API keys and rate limits: one protocol, an in-process and a Redis backend.

``state_backend(redis, prefix)`` picks the backend: ``RedisState`` when the app has a Redis client
(several replicas share it), else ``MemoryState`` (a single process).
"""

from __future__ import annotations

from typing import Any

from vlm_gateway.state.memory import MemoryState
from vlm_gateway.state.protocol import SlotGrant, StateBackend, WindowResult
from vlm_gateway.state.redis import RedisState

__all__ = ["MemoryState", "RedisState", "SlotGrant", "StateBackend", "WindowResult", "state_backend"]


def state_backend(redis: Any = None, prefix: str = "vlm:", url: str | None = None) -> StateBackend:
    """``RedisState(redis, prefix, url)`` when a client is given, else a fresh ``MemoryState``."""
    return MemoryState() if redis is None else RedisState(redis, prefix, url)
