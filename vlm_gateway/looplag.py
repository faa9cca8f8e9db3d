"""``LoopLag``: how late the event loop runs its callbacks, measured every ``interval_s``.

A loop that lags is a loop that stalls every request of the process; the number goes into logs (the
limiter's slot trace) and warnings. Started and stopped by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("vlm_gateway")


class LoopLag:
    def __init__(self, interval_s: float = 0.1, warn_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.warn_s = warn_s
        self.last_s = 0.0
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def ms(self) -> float:
        """The latest lag in milliseconds."""
        return self.last_s * 1000

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            self.last_s = max(0.0, loop.time() - start - self.interval_s)
            self.max_s = max(self.max_s, self.last_s)
            if self.last_s >= self.warn_s:
                log.warning("the event loop stalled for %.1f s", self.last_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
