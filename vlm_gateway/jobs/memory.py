"""The in-process queue (the embedded default: one process, no Redis), with the Redis backend's semantics:
leases, heartbeats, reclaim after the visibility timeout, first-completion-wins, persisted webhook state
(persisted in this process only), result TTL."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque

import msgspec

from vlm_gateway.jobs.queue import BaseJobQueue, WebhookVetter, not_found, position
from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.jobs.types import CancelOutcome, Claim, Completed, Delivery, Job, JobView, Lease, cancelled


class _Record(msgspec.Struct):
    job: Job
    seq: int
    state: str = "queued"
    attempts: int = 0
    result: Completed | None = None
    expires: float = 0.0  # done only: when status/result stop being readable
    stop: bool = False  # cancelled while running: its worker is told at its next heartbeat
    webhook_state: str = ""  # "", "pending", "delivered", "failed"
    webhook_attempts: int = 0
    webhook_next: float = 0.0


class MemoryJobQueue(BaseJobQueue):
    """Jobs in dicts, the queue an ``asyncio`` deque; a lease is pending until acked or reclaimed."""

    def __init__(self, settings: JobSettings, vet_webhook: WebhookVetter | None = None) -> None:
        super().__init__(vet_webhook)
        self.settings = settings
        self._records: dict[str, _Record] = {}
        self._ready: deque[str] = deque()
        self._pending: dict[str, tuple[str, float]] = {}  # job id -> (consumer, last heartbeat)
        self._expiry: list[tuple[float, str]] = []
        self._arrived = asyncio.Event()
        self._seq = 0
        self._started = 0

    # --- client side ------------------------------------------------------------------------------

    async def _enqueue(self, job: Job) -> None:
        self._sweep()
        self._seq += 1
        self._records[job.id] = _Record(job, self._seq)
        self._ready.append(job.id)
        self._arrived.set()

    def _get(self, job_id: str, owner: str | None = None) -> _Record:
        self._sweep()
        rec = self._records.get(job_id)
        if rec is None or (rec.state == "done" and rec.expires <= time.time()) or (
                owner is not None and rec.job.caller.key_id != owner):
            raise not_found(job_id)
        return rec

    def _view(self, rec: _Record, with_result: bool) -> JobView:
        view = JobView(rec.job.id, rec.state, kind=rec.job.kind, created=rec.job.created)  # type: ignore[arg-type]
        if rec.state == "queued":
            view.position = position(rec.seq, self._started)
        elif rec.state == "done" and rec.result is not None:
            view.error = rec.result.error
            view.result = rec.result if with_result else None
        return view

    async def status(self, job_id: str, owner: str | None = None) -> JobView:
        return self._view(self._get(job_id, owner), False)

    async def result(self, job_id: str, owner: str | None = None) -> JobView:
        return self._view(self._get(job_id, owner), True)

    async def cancel(self, job_id: str, owner: str | None = None) -> CancelOutcome:
        rec = self._get(job_id, owner)
        if rec.state == "queued":  # its webhook is sent when a worker reaches the job (``begin``)
            self._finish(rec, cancelled())
        elif rec.state == "running":
            rec.stop = True
            return "requested"
        return "cancelled" if rec.result == cancelled() else "finished"

    # --- worker side ------------------------------------------------------------------------------

    async def backlog(self) -> tuple[int, float]:
        """Jobs queued or running, and the age of the oldest (seconds; 0 with none)."""
        waiting = [self._records[j].job.created for j in (*self._ready, *self._pending) if j in self._records]
        return len(waiting), (time.time() - min(waiting)) if waiting else 0.0

    async def take(self, consumer: str, count: int, block_s: float) -> list[Lease]:
        if not self._ready:
            self._arrived.clear()
            try:
                async with asyncio.timeout(block_s):  # not wait_for: it can swallow a cancellation (3.11)
                    await self._arrived.wait()
            except TimeoutError:
                return []
        leases = []
        now = time.monotonic()
        while self._ready and len(leases) < count:
            job_id = self._ready.popleft()
            self._pending[job_id] = (consumer, now)
            leases.append(Lease(job_id, job_id))
        return leases

    async def reclaim(self, consumer: str, count: int) -> list[Lease]:
        cutoff = time.monotonic() - self.settings.visibility_timeout_s
        stale = [job_id for job_id, (_, seen) in self._pending.items() if seen <= cutoff][:count]
        now = time.monotonic()
        for job_id in stale:
            self._pending[job_id] = (consumer, now)
        return [Lease(job_id, job_id) for job_id in stale]

    async def heartbeat(self, consumer: str, leases: list[Lease]) -> set[str]:
        now = time.monotonic()
        stop = set()
        for lease in leases:
            if lease.entry in self._pending:
                self._pending[lease.entry] = (consumer, now)
            rec = self._records.get(lease.job_id)
            if rec is not None and rec.stop and rec.state == "running":
                stop.add(lease.job_id)
        return stop

    async def release(self, consumer: str, leases: list[Lease]) -> None:
        for lease in leases:
            if lease.entry in self._pending:
                self._pending[lease.entry] = (consumer, float("-inf"))

    async def begin(self, lease: Lease, consumer: str) -> Claim:
        rec = self._records.get(lease.job_id)
        if rec is None:
            return Claim("ack")
        self._started = max(self._started, rec.seq)
        if rec.state == "done":
            return Claim("deliver", delivery=self._delivery(rec)) if rec.webhook_state == "pending" else Claim("ack")
        rec.state = "running"
        rec.attempts += 1
        return Claim("run", job=rec.job, attempt=rec.attempts, stopped=rec.stop)

    async def complete(self, lease: Lease, result: Completed) -> tuple[bool, Delivery | None]:
        rec = self._records.get(lease.job_id)
        if rec is None:
            return True, None  # expired meanwhile: nothing left to do but ack
        if rec.state == "done":
            return False, None
        self._finish(rec, result)
        return True, self._delivery(rec) if rec.job.webhook else None

    async def webhook_attempt(self, job_id: str, next_at: float) -> int:
        rec = self._records.get(job_id)
        if rec is None:
            return 0
        rec.webhook_attempts += 1
        rec.webhook_next = next_at
        return rec.webhook_attempts

    async def webhook_done(self, job_id: str, delivered: bool) -> None:
        rec = self._records.get(job_id)
        if rec is not None:
            rec.webhook_state = "delivered" if delivered else "failed"
            self._expire_at(rec, rec.expires)

    async def ack(self, lease: Lease) -> None:
        self._pending.pop(lease.entry, None)

    # --- helpers ----------------------------------------------------------------------------------

    def _finish(self, rec: _Record, result: Completed) -> None:
        """``rec`` done with ``result``: readable for ``result_ttl_s``, or, with a webhook, until its delivery
        has ended (then swept)."""
        rec.state, rec.result = "done", result
        expires = time.time() + self.settings.result_ttl_s
        if rec.job.webhook:
            rec.webhook_state, rec.expires = "pending", expires
        else:
            self._expire_at(rec, expires)

    def _delivery(self, rec: _Record) -> Delivery:
        assert rec.result is not None and rec.job.webhook
        return Delivery(rec.job.id, rec.job.webhook, rec.result, rec.webhook_attempts, rec.webhook_next)

    def _expire_at(self, rec: _Record, when: float) -> None:
        rec.expires = when
        heapq.heappush(self._expiry, (when, rec.job.id))

    def _sweep(self) -> None:
        """Forget finished jobs past their TTL (never one whose webhook is still pending)."""
        now = time.time()
        while self._expiry and self._expiry[0][0] <= now:
            when, job_id = heapq.heappop(self._expiry)
            rec = self._records.get(job_id)
            if rec is not None and rec.expires == when and rec.webhook_state != "pending":
                del self._records[job_id]
