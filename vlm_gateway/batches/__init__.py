"""OpenAI's Batch API: many requests from one JSONL file, run on the durable job queue.

Read in this order:

* ``lines``    the input file's checks, and the output lines each request produces;
* ``service``  ``BatchService``: create / retrieve / cancel / page (list), and the status moves;
* ``runner``   the two job kinds: a fan-out job queues one job per line; a line job runs its request
               through the same pipeline as the HTTP route, under the batch owner's key;
* ``finalize`` the output and error files, and the final status;
* ``store``    records, counters and line results (``MemoryBatches``; ``redis.RedisBatches`` shared by
               every replica, atomic).

Wiring, in the app's lifespan (after the file store and the Responses store)::

    app.state.batches = BatchService(build_batch_store(settings.batches, redis), settings.batches,
                                     app.state.files, lambda: app.state.services, lambda: app.state.jobs,
                                     lambda: app.state.responses)
    runner = with_batches(runner, app.state.batches)   # then build_jobs(..., runner, ...)
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use: ``vlm_gateway.settings`` imports ``vlm_gateway.batches.settings``, and
# the service imports the pipeline (and so the settings): importing them here would be circular.
_WHERE = {
    "BatchSettings": "settings", "BatchService": "service", "with_batches": "runner",
    "build_batch_store": "store", "BatchStore": "store", "BatchRecord": "store", "MemoryBatches": "store",
    "RedisBatches": "redis", "finalize": "finalize", "parse_input": "lines",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
