"""Async jobs (fal-style ``/queue``): a queue (Redis Stream, or in-memory), workers, signed webhooks.

Wiring, in the app's lifespan, with the shared aiohttp session and the optional Redis client::

    jobs = build_jobs(settings.jobs, session, runner, redis=redis)   # redis=None: in-memory queue
    await jobs.start()
    app.state.jobs = jobs
    ...
    await jobs.stop()

Other routes submit with ``await app.state.jobs.queue.submit(kind, model, body, webhook=..., metadata=...)``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use: ``vlm_gateway.settings`` imports ``vlm_gateway.jobs.settings``, and that
# must not pull aiohttp, Redis and the workers into every process (``vlm-gateway render`` stays fast).
_WHERE = {
    "Classifier": "classify", "default_classify": "classify",
    "MemoryJobQueue": "memory", "JobQueue": "queue", "RedisJobQueue": "redis_backend",
    "JobSettings": "settings", "WebhookSettings": "settings",
    "Job": "types", "JobOutcome": "types", "JobView": "types", "failed": "types",
    "outcome_from_exception": "types", "succeeded": "types",
    "WebhookSender": "webhooks", "Runner": "worker", "Worker": "worker",
    "JobServices": "services", "build_jobs": "services",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
