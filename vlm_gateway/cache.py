"""Small in-process building blocks: a bounded LRU with TTL, single-flight, and counters."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from vlm_gateway import metrics

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """Least-recently-used cache bounded by entry count and total size, with a time to live.

    ``sizeof(value)`` gives an entry's weight for ``max_bytes``; a single value heavier than
    ``max_bytes`` is not stored. Not thread-safe: use it from the event loop only.
    """

    def __init__(
        self, max_entries: int, ttl_s: float, *, max_bytes: int | None = None,
        sizeof: Callable[[V], int] = len,  # type: ignore[assignment]
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max(0, max_entries)
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._clock = clock
        self._items: OrderedDict[K, tuple[float, int, V]] = OrderedDict()
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        """The value for ``key`` (now most recently used), or ``None`` if absent or expired."""
        item = self._items.get(key)
        if item is None:
            return None
        expires, _size, value = item
        if expires <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Store ``value``, evicting the least recently used entries to stay within the bounds."""
        size = self._sizeof(value)
        if self.max_entries == 0 or self.ttl_s <= 0 or (self.max_bytes is not None and size > self.max_bytes):
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (self._clock() + self.ttl_s, size, value)
        self.total_bytes += size
        while len(self._items) > self.max_entries or (
            self.max_bytes is not None and self.total_bytes > self.max_bytes
        ):
            self._drop(next(iter(self._items)))

    def discard(self, key: K) -> None:
        """Forget ``key`` (nothing happens if absent)."""
        if key in self._items:
            self._drop(key)

    def _drop(self, key: K) -> None:
        _expires, size, _value = self._items.pop(key)
        self.total_bytes -= size


class SingleFlight(Generic[K, V]):
    """Concurrent callers asking for the same key share one running computation.

    The computation runs as its own task: a caller that is cancelled (client gone) does not cancel it
    for the others. Its outcome, value or exception, goes to every caller waiting at the time.
    """

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, key: K, start: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """``(value, shared)``: ``shared`` is true when this call joined a computation already running."""
        task = self._tasks.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(start())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task), shared

    def _finished(self, key: K, task: asyncio.Future[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away


class Stats(Counter):
    """Named counters (``stats["downloads"] += 1``); ``snapshot()`` is a plain dict of ints. Every
    increase also counts in the Prometheus metrics (``vlm_gateway_image_loader_events_total{event}``)."""

    def __setitem__(self, key: str, value: int) -> None:
        grown = value - self.get(key, 0)
        if grown > 0:
            metrics.IMAGE_EVENTS.labels(key).inc(grown)
        super().__setitem__(key, value)

    def snapshot(self) -> dict[str, int]:
        return {key: int(value) for key, value in sorted(self.items())}
