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

from typing import Any

import aiohttp
import msgspec

from gateway.images.guard import Resolver
from gateway.jobs.classify import Classifier, default_classify
from gateway.jobs.memory import MemoryJobQueue
from gateway.jobs.queue import JobQueue
from gateway.jobs.redis_backend import RedisJobQueue
from gateway.jobs.settings import JobSettings, WebhookSettings
from gateway.jobs.types import Job, JobOutcome, JobView, failed, outcome_from_exception, succeeded
from gateway.jobs.webhooks import WebhookSender
from gateway.jobs.worker import Runner, Worker

__all__ = [
    "Classifier", "Job", "JobOutcome", "JobQueue", "JobServices", "JobSettings", "JobView", "MemoryJobQueue",
    "RedisJobQueue", "Runner", "WebhookSender", "WebhookSettings", "Worker", "build_jobs", "default_classify",
    "failed", "outcome_from_exception", "succeeded",
]


class JobServices(msgspec.Struct):
    """What the ``/queue`` routes and other submitters use (``request.app.state.jobs``)."""

    settings: JobSettings
    queue: JobQueue
    worker: Worker | None  # None: this replica only submits
    webhooks: WebhookSender
    classify: Classifier = default_classify

    async def start(self) -> None:
        await self.queue.start()
        if self.worker is not None:
            await self.worker.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        if self.worker is not None:
            await self.worker.stop(grace_s)
        await self.queue.close()


def build_jobs(settings: JobSettings, session: aiohttp.ClientSession, runner: Runner | None, *,
               redis: Any = None, classify: Classifier = default_classify, resolver: Resolver | None = None,
               worker_name: str | None = None) -> JobServices:
    """The queue (Redis when ``redis`` is given, else in-memory), its worker (none when ``runner`` is
    None) and the webhook sender (vetting webhook URLs at submission, through the image SSRF guard)."""
    webhooks = WebhookSender(session, settings.webhook, resolver)
    queue: JobQueue = (RedisJobQueue(redis, settings, webhooks.vet) if redis is not None
                       else MemoryJobQueue(settings, webhooks.vet))
    worker = None if runner is None else Worker(queue, runner, settings=settings, webhooks=webhooks,
                                                name=worker_name)
    return JobServices(settings, queue, worker, webhooks, classify)
