"""``python -m tests.gateway.limits.stallable serve …``: the gateway CLI, plus a SIGUSR1 handler that
stalls the process's main thread (its event loop) for ``$STALL_S`` seconds (default 2) — a stand-in for
a long synchronous step on a loaded box. Test-only."""

import asyncio
import os
import signal
import sys
import time

from vlm_gateway.cli import main


def _stall(signum: int, frame: object) -> None:
    # Stall as a callback of the event loop, as a long synchronous step does: sleeping in the handler itself
    # would stall wherever the signal lands, maybe inside a lock the keeper thread needs next (the logging
    # handler's, the keeper's own), and so stop that thread too, which no real stall does.
    loop = asyncio._get_running_loop()
    if loop is not None:
        loop.call_soon_threadsafe(time.sleep, float(os.environ.get("STALL_S", "2")))


signal.signal(signal.SIGUSR1, _stall)
sys.exit(main())
