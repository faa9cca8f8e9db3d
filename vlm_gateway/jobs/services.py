"""``JobServices`` (what the ``/queue`` routes and other submitters use) and ``build_jobs``."""


from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from vlm_gateway.images.guard import Resolver
from vlm_gateway.jobs.classify import Classifier, default_classify
from vlm_gateway.jobs.memory import MemoryJobQueue
from vlm_gateway.jobs.queue import JobQueue
from vlm_gateway.jobs.redis_backend import RedisJobQueue
from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.jobs.webhooks import WebhookSender
from vlm_gateway.jobs.worker import Runner, Worker


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
