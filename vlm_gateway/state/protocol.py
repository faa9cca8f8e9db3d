"""The few shared-state primitives that API keys and rate limits need, as one protocol.

Two implementations: ``MemoryState`` (one process, the embedded default) and ``RedisState`` (shared by
every replica; each primitive is one atomic Lua script). Both pass the same test suite
(tests/gateway/state/test_backends.py).

Primitives:

* **sliding window** — ``hit`` (check and record atomically), ``add`` (record unconditionally) and
  ``peek`` (check only). A window is a log of ``(time, cost)`` entries; an entry counts for
  ``window_s`` seconds after it was recorded, so at most ``limit`` cost is ever admitted in any
  ``window_s`` stretch (no fixed-window boundary burst).
* **leased slots** — ``acquire_slot`` / ``renew_slots_blocking`` / ``release_slot``: at most ``limit``
  holders at a time; a holder that stops renewing loses its slot ``lease_ttl_s`` after its last renewal
  (a replica killed with ``kill -9`` gives its slots back by itself). Renewals are blocking calls made
  from the limiter's own thread (``SlotKeeper``), so a stalled event loop cannot let a lease lapse;
  they only extend leases that still exist, and a release removes only the caller's own holder id.
* **hash** — ``hash_get`` / ``hash_set`` / ``hash_all`` / ``hash_len``: a small string→bytes map (key
  records).
* **value** — ``value_get`` / ``value_set`` / ``value_delete``: one bytes value per key that expires
  ``ttl_s`` after it was last set (stored Responses API responses).

Keys are plain names (``"rpm:key_ab12"``); a backend may prefix them (``RedisState(prefix=...)``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec


class WindowResult(msgspec.Struct, frozen=True):
    """A sliding window's state after ``hit`` / ``peek``.

    ``used``: cost counted in the window now (after recording, for an allowed ``hit``).
    ``reset_s``: seconds until the window is empty again (its newest entry ages out).
    ``retry_after_s``: when not allowed, seconds until enough ages out for the request to fit; else 0.
    """

    allowed: bool
    used: int
    limit: int
    reset_s: float
    retry_after_s: float = 0.0

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


class SlotGrant(msgspec.Struct, frozen=True):
    """What ``acquire_slot`` did: ``granted``, the slots ``held`` afterwards (the holder included when
    granted) and the lease's length in seconds as stored (0 when refused)."""

    granted: bool
    held: int
    lease_s: float = 0.0

    def __bool__(self) -> bool:
        return self.granted


@runtime_checkable
class StateBackend(Protocol):
    """Shared state for keys and limits. Every method is atomic with respect to every other caller."""

    async def hit(self, key: str, window_s: float, limit: int, cost: int = 1) -> WindowResult:
        """Record ``cost`` in the window if ``used + cost <= limit``; say whether it was."""
        ...

    async def peek(self, key: str, window_s: float, limit: int) -> WindowResult:
        """Whether the window has room (``used < limit``); records nothing."""
        ...

    async def add(self, key: str, window_s: float, amount: int) -> None:
        """Record ``amount`` unconditionally (tokens, counted after a request finishes)."""
        ...

    async def acquire_slot(self, key: str, limit: int, lease_ttl_s: float, holder: str) -> SlotGrant:
        """Take one of ``limit`` slots for ``holder`` (leased for ``lease_ttl_s``); not granted when all
        are held. Expired leases are dropped first. A holder that already holds a slot keeps it (renewed).
        """
        ...

    def renew_slots_blocking(self, key: str, holders: list[str], lease_ttl_s: float) -> list[bool]:
        """Extend each holder's lease (thread-safe, blocking); False where it no longer holds one
        (expired or released): such a lease is not re-created."""
        ...

    async def release_slot(self, key: str, holder: str) -> bool:
        """Give ``holder``'s own slot back (no-op when it holds none); whether it held one."""
        ...

    def close_blocking(self) -> None:
        """Close what the renewals opened (the limiter's thread has stopped)."""
        ...

    async def slots_in_use(self, key: str) -> int:
        """Live leases on ``key`` (expired ones not counted)."""
        ...

    async def hash_get(self, key: str, field: str) -> bytes | None: ...

    async def hash_set(self, key: str, field: str, value: bytes) -> None: ...

    async def hash_all(self, key: str) -> dict[str, bytes]: ...

    async def hash_len(self, key: str) -> int: ...

    async def value_get(self, key: str) -> bytes | None:
        """The value set at ``key``; None when there is none or it expired."""
        ...

    async def value_set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Set (or replace) the value at ``key``; it expires ``ttl_s`` seconds from now."""
        ...

    async def value_delete(self, key: str) -> bool:
        """Remove the value at ``key``; whether there was one."""
        ...
