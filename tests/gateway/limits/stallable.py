"""``python -m tests.gateway.limits.stallable serve …``: the gateway CLI, plus a SIGUSR1 handler that
stalls the process's main thread (its event loop) for ``$STALL_S`` seconds (default 2) — a stand-in for
a long synchronous step on a loaded box. Test-only."""

import os
import signal
import sys
import time

from vlm_gateway.cli import main


def _stall(signum: int, frame: object) -> None:
    time.sleep(float(os.environ.get("STALL_S", "2")))


signal.signal(signal.SIGUSR1, _stall)
sys.exit(main())
