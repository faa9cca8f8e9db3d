"""``Permit``: one admitted request's concurrency slot (and tokens/min account), freed exactly once.

While held, the limiter's ``SlotKeeper`` thread renews the slot's lease, and the request calls
``check`` before each step (a lease that may have lapsed is taken again, or the request stops);
``charge`` counts the prompt's tokens against the key's tokens/min just before the request goes to the
engine (a 429 when they do not fit: requests running at once cannot all pass a check made before any of
them counted); ``release`` stops the renewals and frees the slot (and records the rest of the request's
tokens for TPM). If the process dies, renewals stop and the
lease runs out ``lease_ttl_s`` later — that is how a ``kill -9``-ed replica gives its slots back. A
Permit dropped without ``release`` (a bug) is released when garbage-collected, and renewals stop anyway
once the request has outlived its timeout by a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlm_gateway.limits.keeper import Lease

Cleanup = Callable[[int], Awaitable[None]]
Charge = Callable[[int], Awaitable[dict[str, str]]]  # tokens -> the updated x-ratelimit-*-tokens headers


class Permit:
    """One admitted request.

    ``headers``: the ``x-ratelimit-*`` headers to send with the response (empty without keys).
    ``timeout_s``: how long the request may run. Call ``await permit.release(tokens)`` in a ``finally``.
    """

    def __init__(self, headers: dict[str, str], timeout_s: float, *, cleanup: Cleanup | None = None,
                 spawn: Callable[[Awaitable[None]], asyncio.Task[None]] | None = None,
                 lease: Lease | None = None, revalidate: Callable[[Lease], Awaitable[None]] | None = None,
                 charge: Charge | None = None) -> None:
        self.headers = headers
        self.charged = 0  # tokens counted by ``charge`` (``release`` records the rest)
        self._charge = charge
        self.timeout_s = timeout_s
        self._lease = lease
        self._revalidate = revalidate
        self._cleanup = cleanup
        self._spawn = spawn or asyncio.ensure_future
        self._released = cleanup is None
        self._dropped = weakref.finalize(self, _release_dropped, cleanup, self._spawn) if cleanup else None

    @property
    def released(self) -> bool:
        return self._released

    async def check(self) -> None:
        """Before each step of the request: its slot's lease is surely still held, or it is taken again
        (``RateLimited`` ``concurrency_slot_lost`` when the key's slots are all taken meanwhile)."""
        if self._lease is not None and not self._lease.valid() and self._revalidate is not None:
            await self._revalidate(self._lease)

    async def charge(self, tokens: int) -> None:
        """Count ``tokens`` (the prompt's) against the key's tokens/min now: ``RateLimited`` when they do not
        fit. A prompt sent to the engine stays counted, whatever becomes of the request."""
        if self._charge is not None and tokens > 0 and not self.charged:
            self.headers.update(await self._charge(tokens))
            self.charged = tokens

    async def release(self, tokens: int = 0) -> None:
        """Free the slot and record ``tokens``. Idempotent; safe in a ``finally`` of a cancelled task.

        The work runs in its own task: if the caller is cancelled again while waiting (a client
        disconnect under a cancel scope), the slot is still freed.
        """
        if self._released or self._cleanup is None:
            return
        self._released = True
        if self._dropped is not None:
            self._dropped.detach()
        await asyncio.shield(self._spawn(self._cleanup(max(0, int(tokens) - self.charged))))

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Permit {state} timeout_s={self.timeout_s} headers={self.headers}>"


def _release_dropped(cleanup: Cleanup, spawn: Callable[[Awaitable[None]], asyncio.Task[None]]) -> None:
    """A permit garbage-collected while held: free it, when a loop still runs."""
    with contextlib.suppress(RuntimeError):  # no running loop (interpreter exit): the lease lapses
        asyncio.get_running_loop()
        spawn(cleanup(0))
