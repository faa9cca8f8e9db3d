"""``SlotKeeper``: keeps this replica's concurrency slots leased, from a thread of its own.

A slot is a lease in the shared state (``StateBackend.acquire_slot``). While a request runs, its lease
must be renewed before ``lease_ttl_s`` runs out, or another replica may take the slot and the key's
concurrency limit no longer holds. Renewing from the event loop (one task per request, as before) fails
exactly when it matters: a loop that stalls longer than the lease (a long synchronous step, a loaded
box) lets every lease of the replica lapse while its requests still run. The keeper renews all held
leases in one call per key from a daemon thread, so only a replica whose whole process stops (killed,
frozen) loses its slots — and those come back ``lease_ttl_s`` after its last renewal.

Every acquire, renewal, loss and release is logged on ``vlm_gateway.limits.slots`` at DEBUG (set
``limits.trace_slots = true``) with the key, holder id (``<replica>:<request>``), lease and loop lag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import msgspec

from vlm_gateway.state import StateBackend

trace = logging.getLogger("vlm_gateway.limits.slots")


class Held(msgspec.Struct):
    key: str
    name: str  # the key's display name, for logs
    deadline: float  # monotonic: stop renewing after this (a request outliving its timeout)


class SlotKeeper:
    """The slots this replica holds, renewed every ``interval_s`` by a daemon thread."""

    def __init__(self, state: StateBackend, replica: str, lease_ttl_s: float, interval_s: float,
                 lag_ms: Callable[[], float] = lambda: 0.0) -> None:
        self.state = state
        self.replica = replica
        self.lease_ttl_s = lease_ttl_s
        self.interval_s = interval_s
        self.lag_ms = lag_ms
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, key: str, holder: str, name: str, max_s: float) -> None:
        """Start renewing ``holder``'s lease on ``key`` (for at most ``max_s`` seconds)."""
        with self._lock:
            self._held[holder] = Held(key, name, time.monotonic() + max_s)
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
        by_key: dict[str, list[str]] = defaultdict(list)
        with self._lock:
            for holder, held in list(self._held.items()):
                if now > held.deadline:
                    logging.getLogger("vlm_gateway.limits").warning(
                        "a request of key %s outlived its timeout; its slot lapses", held.name)
                    del self._held[holder]
                else:
                    by_key[held.key].append(holder)
        gone: list[tuple[str, str]] = []
        for key, holders in by_key.items():
            alive = self.state.renew_slots_blocking(key, holders, self.lease_ttl_s)
            for holder, ok in zip(holders, alive, strict=True):
                if trace.isEnabledFor(logging.DEBUG):
                    trace.debug("renew key=%s holder=%s ok=%d lease_s=%.3f lag_ms=%.0f", key, holder, ok,
                                self.lease_ttl_s, self.lag_ms())
                if not ok:
                    gone.append((key, holder))
        lost = []
        for key, holder in gone:
            with self._lock:
                still_held = self._held.pop(holder, None) is not None
            if still_held:  # not released by us, yet gone: the process stood still for a whole lease
                lost.append(holder)
                logging.getLogger("vlm_gateway.limits").error(
                    "slot lease lost: key=%s holder=%s (no renewal reached the state for %.1f s)",
                    key, holder, self.lease_ttl_s)
        return lost

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.renew_once()
            except Exception as exc:  # noqa: BLE001 - keep trying; the lease covers a few misses
                logging.getLogger("vlm_gateway.limits").warning("renewing slot leases failed: %r", exc)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.interval_s + 5)
        self.state.close_blocking()
