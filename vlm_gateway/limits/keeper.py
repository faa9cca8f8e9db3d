"""``SlotKeeper``: keeps this replica's concurrency slots leased, from a thread of its own.

A slot is a lease in the shared state (``StateBackend.acquire_slot``). While a request runs, its lease
must be renewed before ``lease_ttl_s`` runs out, or another replica may take the slot and the key's
concurrency limit no longer holds. Renewing from the event loop (one task per request, as before) fails
exactly when it matters: a loop that stalls longer than the lease (a long synchronous step, a starved
process on a loaded box) lets every lease of the replica lapse while its requests still run. The keeper
renews all held leases in one call per key from a daemon thread, so a stalled loop keeps its slots.

A whole process can still stand still for longer than a lease (seen on a loaded 2-core CI box: every
process, its threads included, got no CPU for 6 s). So each lease also carries ``valid_until``, a
local, conservative end: the monotonic time just *before* the last acquire or renewal that succeeded,
plus the lease. Past it the lease may have lapsed in the shared state, and the request must take its
slot again (``Limiter.revalidate``) before it goes on: a request never runs on a lease it cannot prove.

Every acquire, renewal, loss and release is logged on ``vlm_gateway.limits.slots`` at DEBUG (set
``limits.trace_slots = true``) with the key, holder id (``<replica>:<request>``), lease and loop lag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from vlm_gateway.state import StateBackend

log = logging.getLogger("vlm_gateway.limits")
trace = logging.getLogger("vlm_gateway.limits.slots")


class Lease:
    """One held slot: what the keeper renews and what a running request checks."""

    __slots__ = ("key", "holder", "name", "limit", "valid_until", "deadline")

    def __init__(self, key: str, holder: str, name: str, limit: int, valid_until: float, deadline: float) -> None:
        self.key, self.holder, self.name, self.limit = key, holder, name, limit
        self.valid_until = valid_until  # monotonic: surely still held until then
        self.deadline = deadline  # monotonic: stop renewing after this (a request outliving its timeout)

    def valid(self) -> bool:
        return time.monotonic() < self.valid_until


class SlotKeeper:
    """The slots this replica holds, renewed every ``interval_s`` by a daemon thread."""

    def __init__(self, state: StateBackend, replica: str, lease_ttl_s: float, interval_s: float,
                 lag_ms: Callable[[], float] = lambda: 0.0) -> None:
        self.state = state
        self.replica = replica
        self.lease_ttl_s = lease_ttl_s
        self.interval_s = interval_s
        self.lag_ms = lag_ms
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, lease: Lease) -> None:
        """Start renewing ``lease``."""
        with self._lock:
            self._held[lease.holder] = lease
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=f"slot-keeper-{self.replica}", daemon=True)
                self._thread.start()

    def drop(self, holder: str) -> None:
        """Stop renewing (the slot is being released)."""
        with self._lock:
            self._held.pop(holder, None)

    @property
    def holders(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def renew_once(self) -> list[str]:
        """Renew every held lease now; the holders whose lease was gone (lapsed or released elsewhere)."""
        now = time.monotonic()
        by_key: dict[str, list[Lease]] = defaultdict(list)
        with self._lock:
            for holder, lease in list(self._held.items()):
                if now > lease.deadline:
                    log.warning("a request of key %s outlived its timeout; its slot lapses", lease.name)
                    del self._held[holder]
                else:
                    by_key[lease.key].append(lease)
        lost = []
        for key, leases in by_key.items():
            sent = time.monotonic()
            alive = self.state.renew_slots_blocking(key, [lease.holder for lease in leases], self.lease_ttl_s)
            for lease, ok in zip(leases, alive, strict=True):
                if trace.isEnabledFor(logging.DEBUG):
                    trace.debug("renew key=%s holder=%s ok=%d lease_s=%.3f lag_ms=%.0f", key, lease.holder, ok,
                                self.lease_ttl_s, self.lag_ms())
                if ok:
                    lease.valid_until = sent + self.lease_ttl_s
                else:
                    lease.valid_until = 0.0  # the request re-takes its slot before going on, or stops
                    with self._lock:
                        still_held = self._held.pop(lease.holder, None) is not None
                    if still_held:  # not released by us, yet gone: the process stood still for a lease
                        lost.append(lease.holder)
                        log.error("slot lease lost: key=%s holder=%s (no renewal reached the state for %.1f s)",
                                  key, lease.holder, self.lease_ttl_s)
        return lost

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.renew_once()
            except Exception as exc:  # noqa: BLE001 - keep trying; the lease covers a few misses
                log.warning("renewing slot leases failed: %r", exc)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.interval_s + 5)
        self.state.close_blocking()
