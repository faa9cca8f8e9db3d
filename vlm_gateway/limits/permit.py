"""``Permit``: one admitted request's concurrency slot, kept alive while held, freed exactly once.

While held, a background task renews the slot's lease every ``renew_interval_s``; ``release`` stops it
and frees the slot (and records the request's tokens for TPM). If the process dies, renewals stop and
the lease runs out ``lease_ttl_s`` later — that is how a ``kill -9``-ed replica gives its slots back.
A Permit dropped without ``release`` (a bug) cancels its renewals when garbage-collected, and renewals
stop anyway once the request has outlived its timeout by a lease.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable

log = logging.getLogger("vlm_gateway.limits")

Cleanup = Callable[[int, "asyncio.Task[None] | None"], Awaitable[None]]


class Permit:
    """One admitted request.

    ``headers``: the ``x-ratelimit-*`` headers to send with the response (empty without keys).
    ``timeout_s``: how long the request may run. Call ``await permit.release(tokens)`` in a ``finally``.
    """

    def __init__(self, headers: dict[str, str], timeout_s: float, *, cleanup: Cleanup | None = None,
                 renew: Callable[[], Awaitable[None]] | None = None,
                 spawn: Callable[[Awaitable[None]], asyncio.Task[None]] | None = None) -> None:
        self.headers = headers
        self.timeout_s = timeout_s
        self._cleanup = cleanup
        self._spawn = spawn or asyncio.ensure_future
        self._released = cleanup is None
        self._renewer: asyncio.Task[None] | None = None
        if renew is not None:
            self._renewer = asyncio.ensure_future(renew())
            weakref.finalize(self, self._renewer.cancel)

    @property
    def released(self) -> bool:
        return self._released

    async def release(self, tokens: int = 0) -> None:
        """Free the slot and record ``tokens``. Idempotent; safe in a ``finally`` of a cancelled task.

        The work runs in its own task: if the caller is cancelled again while waiting (a client
        disconnect under a cancel scope), the slot is still freed.
        """
        if self._released or self._cleanup is None:
            return
        self._released = True
        if self._renewer is not None:
            self._renewer.cancel()
        await asyncio.shield(self._spawn(self._cleanup(max(0, int(tokens)), self._renewer)))

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Permit {state} timeout_s={self.timeout_s} headers={self.headers}>"
