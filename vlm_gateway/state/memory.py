"""``MemoryState``: the StateBackend for a single process (the embedded default, no Redis).

Everything lives in dicts; no method awaits in the middle, so each one is atomic on the event loop,
and the slot methods also hold a lock (lease renewals come from the limiter's own thread). State is
per process: several workers or replicas each count on their own (use ``RedisState``).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable

from vlm_gateway.state.protocol import SlotGrant, WindowResult


class _Window:
    """A log of ``(time, cost)`` entries, oldest first, and their running sum."""

    __slots__ = ("entries", "used")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.used = 0

    def prune(self, cutoff: float) -> None:
        while self.entries and self.entries[0][0] <= cutoff:
            self.used -= self.entries.popleft()[1]

    def result(self, allowed: bool, limit: int, need: int, now: float, window_s: float) -> WindowResult:
        reset = self.entries[-1][0] + window_s - now if self.entries else 0.0
        retry = 0.0
        if not allowed:
            retry = window_s  # `need > limit` never fits; wait a whole window
            freed = 0
            for t, cost in self.entries:
                freed += cost
                if self.used - freed + need <= limit:
                    retry = t + window_s - now
                    break
        return WindowResult(allowed, self.used, limit, max(0.0, reset), max(0.0, retry))


class MemoryState:
    """In-process StateBackend. ``clock`` is injectable for tests (defaults to ``time.monotonic``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._slots: dict[str, dict[str, float]] = {}  # key → holder → lease expiry
        self._slot_lock = threading.Lock()
        self._hashes: dict[str, dict[str, bytes]] = {}
        self._values: dict[str, tuple[float, bytes]] = {}  # key → (expiry, value)
        self._expiry: list[tuple[float, str]] = []  # (expiry, key), a heap: expired values are swept

    # --- sliding windows ---------------------------------------------------------------------

    def _window(self, key: str, window_s: float, now: float) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        window.prune(now - window_s)
        return window

    def _forget_if_empty(self, key: str) -> None:
        if not self._windows[key].entries:
            del self._windows[key]

    async def hit(self, key: str, window_s: float, limit: int, cost: int = 1) -> WindowResult:
        now = self._clock()
        window = self._window(key, window_s, now)
        allowed = window.used + cost <= limit
        if allowed and cost > 0:
            window.entries.append((now, cost))
            window.used += cost
        result = window.result(allowed, limit, cost, now, window_s)
        self._forget_if_empty(key)
        return result

    async def peek(self, key: str, window_s: float, limit: int) -> WindowResult:
        now = self._clock()
        window = self._window(key, window_s, now)
        result = window.result(window.used < limit, limit, 1, now, window_s)
        self._forget_if_empty(key)
        return result

    async def add(self, key: str, window_s: float, amount: int) -> None:
        now = self._clock()
        window = self._window(key, window_s, now)
        if amount > 0:
            window.entries.append((now, amount))
            window.used += amount
        self._forget_if_empty(key)

    # --- leased slots ------------------------------------------------------------------------

    def _leases(self, key: str) -> dict[str, float]:
        """Live leases on ``key`` (expired ones dropped); a key with none is forgotten."""
        now = self._clock()
        leases = self._slots.pop(key, {})
        leases = {holder: expiry for holder, expiry in leases.items() if expiry > now}
        if leases:
            self._slots[key] = leases
        return leases

    async def acquire_slot(self, key: str, limit: int, lease_ttl_s: float, holder: str) -> SlotGrant:
        with self._slot_lock:
            leases = self._leases(key)
            if holder not in leases and len(leases) >= limit:
                return SlotGrant(False, len(leases))
            leases[holder] = self._clock() + lease_ttl_s
            self._slots[key] = leases
            return SlotGrant(True, len(leases), lease_ttl_s)

    def renew_slots_blocking(self, key: str, holders: list[str], lease_ttl_s: float) -> list[bool]:
        with self._slot_lock:
            leases = self._leases(key)
            out = []
            for holder in holders:
                out.append(holder in leases)
                if holder in leases:
                    leases[holder] = self._clock() + lease_ttl_s
            return out

    async def release_slot(self, key: str, holder: str) -> bool:
        with self._slot_lock:
            leases = self._leases(key)
            held = leases.pop(holder, None) is not None
            if held and not leases:
                del self._slots[key]
            return held

    async def slots_in_use(self, key: str) -> int:
        with self._slot_lock:
            return len(self._leases(key))

    def close_blocking(self) -> None:
        pass

    # --- hash --------------------------------------------------------------------------------

    async def hash_get(self, key: str, field: str) -> bytes | None:
        return self._hashes.get(key, {}).get(field)

    async def hash_set(self, key: str, field: str, value: bytes) -> None:
        self._hashes.setdefault(key, {})[field] = bytes(value)

    async def hash_all(self, key: str) -> dict[str, bytes]:
        return dict(self._hashes.get(key, {}))

    async def hash_len(self, key: str) -> int:
        return len(self._hashes.get(key, {}))

    # --- values ------------------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        """Forget expired values (a heap entry is stale when its key was set again since)."""
        while self._expiry and self._expiry[0][0] <= now:
            expiry, key = heapq.heappop(self._expiry)
            held = self._values.get(key)
            if held is not None and held[0] == expiry:
                del self._values[key]

    async def value_get(self, key: str) -> bytes | None:
        now = self._clock()
        self._sweep(now)
        held = self._values.get(key)
        return held[1] if held is not None and held[0] > now else None

    async def value_set(self, key: str, value: bytes, ttl_s: float) -> None:
        now = self._clock()
        self._sweep(now)
        expiry = now + ttl_s
        self._values[key] = (expiry, bytes(value))
        heapq.heappush(self._expiry, (expiry, key))

    async def value_delete(self, key: str) -> bool:
        now = self._clock()
        self._sweep(now)
        held = self._values.pop(key, None)
        return held is not None and held[0] > now
