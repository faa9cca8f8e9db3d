"""The job queue's interface and what both backends share.

Client side (routes, adapters)::

    job = await queue.submit(kind, model, body, webhook=None, metadata=None)
    # or, to check the body and webhook before admitting it: new_job(...), admit, enqueue(job)
    view = await queue.status(job.id, owner)  # JobView: state, position (queued), error (failed)
    view = await queue.result(job.id, owner)  # JobView with .result (Completed) once done
    what = await queue.cancel(job.id, owner)  # "cancelled" | "requested" (running: stopped soon) | "finished"

Unknown (or expired) ids raise :class:`vlm_gateway.errors.NotFound`, and so do another key's jobs where
``owner`` (the asking key's id) is given: a key sees and cancels only the jobs it submitted.

Worker side: ``take`` / ``reclaim`` hand out :class:`Lease` s; ``begin`` says what to do with one
(run it, deliver its webhook, or just ack); ``complete`` stores the first outcome only and says whether
this call won; ``webhook_attempt`` (a failed attempt, and when to retry) / ``webhook_done`` persist delivery
progress; ``ack`` ends the lease.
A lease whose worker stops heartbeating for ``visibility_timeout_s`` is handed out again by ``reclaim``.
``heartbeat`` answers the ids of the held jobs whose cancellation was asked for while they ran: the worker
stops them and stores them as cancelled. A cancelled job's webhook is sent as any finished job's.

Queue position: every job gets a sequence number at submission and every ``begin`` raises a
"started up to" high-water mark; ``position = seq - mark - 1`` (0: next to start). It is approximate:
jobs cancelled while queued still count until a worker reaches and skips them, and a job reclaimed
after a crash does not move the mark back.
"""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from vlm_gateway.errors import InvalidRequest, NotFound, params_renamed
from vlm_gateway.jobs.types import CancelOutcome, Claim, Completed, Delivery, Job, JobView, Lease
from vlm_gateway.limits.rate import ANONYMOUS, Caller

#: ``async def vet(url) -> None``: raise ``InvalidRequest`` when a webhook URL is not allowed.
WebhookVetter = Callable[[str], Awaitable[None]]


class JobQueue(Protocol):
    """What the routes and the worker use; :class:`MemoryJobQueue` and :class:`RedisJobQueue` implement it."""

    async def submit(self, kind: str, model: str, body: bytes | str, webhook: str | None = None,
                     metadata: dict[str, Any] | None = None, caller: Caller = ANONYMOUS,
                     job_id: str | None = None) -> Job: ...
    async def new_job(self, kind: str, model: str, body: bytes | str, webhook: str | None = None,
                      metadata: dict[str, Any] | None = None, caller: Caller = ANONYMOUS,
                      webhook_param: str = "webhook", job_id: str | None = None) -> Job: ...
    async def enqueue(self, job: Job) -> Job: ...
    async def status(self, job_id: str, owner: str | None = None) -> JobView: ...
    async def result(self, job_id: str, owner: str | None = None) -> JobView: ...
    async def cancel(self, job_id: str, owner: str | None = None) -> CancelOutcome: ...
    async def backlog(self) -> tuple[int, float]: ...  # unfinished jobs, the oldest one's age (s)

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def take(self, consumer: str, count: int, block_s: float) -> list[Lease]: ...
    async def reclaim(self, consumer: str, count: int) -> list[Lease]: ...
    async def heartbeat(self, consumer: str, leases: list[Lease]) -> set[str]: ...  # ids to stop (cancelled)
    async def release(self, consumer: str, leases: list[Lease]) -> None: ...
    async def begin(self, lease: Lease, consumer: str) -> Claim: ...
    async def complete(self, lease: Lease, result: Completed) -> tuple[bool, Delivery | None]: ...
    async def webhook_attempt(self, job_id: str, next_at: float) -> int: ...
    async def webhook_done(self, job_id: str, delivered: bool) -> None: ...
    async def ack(self, lease: Lease) -> None: ...
    async def gc(self, consumer: str) -> None: ...


class BaseJobQueue(abc.ABC):
    """Submission (ids, validation, webhook vetting) and the shared arithmetic; backends add storage."""

    def __init__(self, vet_webhook: WebhookVetter | None = None) -> None:
        self.vet_webhook = vet_webhook

    async def submit(self, kind: str, model: str, body: bytes | str, webhook: str | None = None,
                     metadata: dict[str, Any] | None = None, caller: Caller = ANONYMOUS,
                     job_id: str | None = None) -> Job:
        """Queue a job for ``caller`` (already admitted: ``pipeline.admit_submission``): ``new_job`` then
        ``enqueue``."""
        return await self.enqueue(await self.new_job(kind, model, body, webhook, metadata, caller, job_id=job_id))

    async def new_job(self, kind: str, model: str, body: bytes | str, webhook: str | None = None,
                      metadata: dict[str, Any] | None = None, caller: Caller = ANONYMOUS,
                      webhook_param: str = "webhook", job_id: str | None = None) -> Job:
        """A job checked and not yet queued: a route checks its body and webhook (a 400 naming
        ``webhook_param``, the client's field for it) before it admits the job, so that a refused
        submission costs the key nothing. ``job_id``: its own id (an event's), else a new one."""
        if not kind or not model:
            raise InvalidRequest("a job needs a kind and a model", param="model")
        if webhook is not None:
            if not isinstance(webhook, str) or not webhook:
                raise InvalidRequest("the webhook must be a URL", param=webhook_param, code="invalid_url")
            if self.vet_webhook is not None:
                with params_renamed(lambda _: webhook_param):
                    await self.vet_webhook(webhook)
        return Job(id=job_id or str(uuid.uuid4()), kind=kind, model=model,
                   body=body.encode() if isinstance(body, str) else bytes(body),
                   webhook=webhook, created=time.time(), metadata=dict(metadata or {}), caller=caller)

    async def enqueue(self, job: Job) -> Job:
        """Store ``job`` (from ``new_job``) and make it visible to workers."""
        await self._enqueue(job)
        return job

    @abc.abstractmethod
    async def _enqueue(self, job: Job) -> None:
        """Store ``job`` and make it visible to workers (each backend's own storage)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare storage (idempotent)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what ``start`` set up (the shared clients are not closed)."""

    async def gc(self, consumer: str) -> None:  # noqa: B027 - optional hook
        """Housekeeping run now and then by each worker's reclaim loop."""


def position(seq: int, started: int) -> int:
    """Jobs ahead of job number ``seq`` when jobs up to number ``started`` have started."""
    return max(0, seq - started - 1)


def not_found(job_id: str) -> NotFound:
    return NotFound(f"no request with id {job_id!r} (unknown, or its result expired)", param="request_id")


def backoff(attempt: int, base_s: float, max_s: float) -> float:
    """Delay after failed webhook attempt number ``attempt`` (1-based): base, 2·base, 4·base, … capped."""
    return min(base_s * 2 ** max(0, attempt - 1), max_s)
