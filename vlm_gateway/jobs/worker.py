"""The worker: runs queued jobs ``concurrency`` at a time and delivers their webhooks.

Three loops per worker (one worker per replica, started by the app's lifespan):

* fetch: take new jobs as slots free up;
* reclaim: every ``reclaim_interval_s``, take over jobs (and pending webhooks) whose worker stopped
  heartbeating for ``visibility_timeout_s`` (it died), in every replica;
* heartbeat: every ``heartbeat_s``, refresh everything this worker holds, however long it runs; a job
  cancelled while it runs is stopped then, and stored as cancelled (its webhook sent).

A job waits for its key's limits (concurrency, tokens/min) when it runs, as a queued request does; it
waits aside (``_Slot``): its slot goes to the next job, so one key at its limits does not hold back
every other key's jobs (up to ``ASIDE_PER_SLOT`` waiting jobs per slot; beyond, they keep their slots).

A lease is acked only after all of its work is done (the run, the stored result, the webhook), so a
replica dying at any point leaves it to be reclaimed. A worker whose completion loses (another worker
finished the same job first) neither acks nor delivers: the winner does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from vlm_gateway.jobs.queue import JobQueue, backoff
from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.jobs.types import (
    Claim,
    Completed,
    Delivery,
    Job,
    JobOutcome,
    Lease,
    cancelled,
    failed,
    outcome_from_exception,
    to_completed,
)
from vlm_gateway.jobs.webhooks import WebhookSender
from vlm_gateway.limits.rate import ADMISSION_WAIT

log = logging.getLogger("vlm_gateway.jobs")

#: Supplied by the app: runs one job through the real pipeline (it may raise GatewayErrors).
Runner = Callable[[Job], Awaitable[JobOutcome]]
GC_EVERY = 60  # reclaim cycles between consumer clean-ups
ASIDE_PER_SLOT = 16  # jobs waiting for their key's limits without a slot, per slot (beyond: they keep it)


class _Slot:
    """One job's hold on a worker slot. While the job waits for its key's limits (the limiter's
    ``ADMISSION_WAIT``) the slot goes to other jobs, and is taken back before the job tries again."""

    def __init__(self, worker: Worker) -> None:
        self.worker, self.held = worker, True

    @contextlib.asynccontextmanager
    async def aside(self) -> AsyncIterator[None]:
        worker = self.worker
        if not self.held or worker.aside >= worker.concurrency * ASIDE_PER_SLOT:
            yield
            return
        self.release()
        worker.aside += 1
        try:
            yield
        finally:
            worker.aside -= 1
        await worker.take_slot()  # (not reached when the wait was cancelled)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.worker.free_slot()


def consumer_name() -> str:
    """Unique per worker: host, process and a random part (a restarted process never reuses one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Worker:
    """Runs jobs from ``queue`` with ``runner``; ``start()`` / ``stop()`` from the app's lifespan."""

    def __init__(self, queue: JobQueue, runner: Runner, *, settings: JobSettings | None = None,
                 concurrency: int | None = None, webhooks: WebhookSender | None = None,
                 name: str | None = None) -> None:
        self.queue = queue
        self.runner = runner
        self.settings = settings or JobSettings()
        self.concurrency = max(1, concurrency or self.settings.concurrency)
        self.webhooks = webhooks
        self.consumer = name or consumer_name()
        self._busy = 0
        self.aside = 0  # jobs waiting for their keys' limits, their slots given up (``_Slot.aside``)
        self._slot_freed = asyncio.Event()
        self._held: dict[str, Lease] = {}  # queue entry -> lease, for heartbeats
        self._loops: list[asyncio.Task[None]] = []
        self._jobs: set[asyncio.Task[None]] = set()
        self._runs: dict[str, asyncio.Task[JobOutcome]] = {}  # job id -> its runner, while it runs
        self._stopped: set[str] = set()  # jobs stopped because they were cancelled
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        await self.queue.start()
        for loop in (self._fetch_loop, self._reclaim_loop, self._heartbeat_loop):
            self._loops.append(asyncio.create_task(loop(), name=f"jobs-{loop.__name__}"))

    async def stop(self, grace_s: float = 5.0, *, release: bool = True) -> None:
        """Stop taking work, give running jobs ``grace_s`` to finish, then cancel them (unacked: they are
        reclaimed later). ``release`` makes what is still held reclaimable at once; ``stop(0,
        release=False)`` is what a crash looks like to the other replicas."""
        self._stopping = True
        heartbeat, others = self._loops[-1:], self._loops[:-1]  # heartbeats go on during the grace period
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._jobs and grace_s > 0:
            await asyncio.wait(self._jobs, timeout=grace_s)
        held = list(self._held.values())
        for task in [*self._jobs, *heartbeat]:
            task.cancel()
        await asyncio.gather(*self._jobs, *heartbeat, return_exceptions=True)
        self._loops.clear()
        if release and held:
            with contextlib.suppress(Exception):
                await self.queue.release(self.consumer, held)

    @property
    def busy(self) -> int:
        """Jobs running now (webhook deliveries do not hold a slot)."""
        return self._busy

    # --- loops ------------------------------------------------------------------------------------

    async def _free_slots(self) -> int:
        while self._busy >= self.concurrency:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        return self.concurrency - self._busy

    async def take_slot(self) -> None:
        """A slot for a job that gave its own up while it waited (``_Slot.aside``)."""
        await self._free_slots()
        self._busy += 1

    async def _fetch_loop(self) -> None:
        while not self._stopping:
            free = await self._free_slots()
            try:
                leases = await self.queue.take(self.consumer, free, self.settings.poll_s)
            except Exception as exc:
                log.warning("taking jobs failed: %s", exc)
                await asyncio.sleep(min(1.0, self.settings.poll_s))
                continue
            for lease in leases:  # taken even while stopping: spawned, then cancelled, reclaimed later
                self._spawn(lease)

    async def _reclaim_loop(self) -> None:
        cycles = 0
        while not self._stopping:
            await asyncio.sleep(self.settings.reclaim_interval_s)
            cycles += 1
            try:
                if self._busy < self.concurrency:
                    for lease in await self.queue.reclaim(self.consumer, self.concurrency - self._busy):
                        if lease.entry not in self._held:  # our own, late heartbeat: already being handled
                            self._spawn(lease)
                if cycles % GC_EVERY == 0:
                    await self.queue.gc(self.consumer)
            except Exception as exc:
                log.warning("reclaiming jobs failed: %s", exc)

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                for job_id in await self.queue.heartbeat(self.consumer, list(self._held.values())):
                    run = self._runs.get(job_id)
                    if run is not None and job_id not in self._stopped:
                        log.info("job %s was cancelled while it ran: stopping it", job_id)
                        self._stopped.add(job_id)
                        run.cancel()
            except Exception as exc:
                log.warning("job heartbeat failed: %s", exc)

    # --- one lease --------------------------------------------------------------------------------

    def _spawn(self, lease: Lease) -> None:
        self._busy += 1
        self._held[lease.entry] = lease
        task = asyncio.create_task(self._handle(lease), name=f"job-{lease.job_id}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    def free_slot(self) -> None:
        self._busy -= 1
        self._slot_freed.set()

    async def _handle(self, lease: Lease) -> None:
        slot = _Slot(self)
        ADMISSION_WAIT.set(slot.aside)  # (in this job's own task: its context is its own)
        try:
            claim = await self.queue.begin(lease, self.consumer)
            delivery = claim.delivery
            if claim.action == "run":
                won, delivery = await self.queue.complete(lease, await self._run(claim))
                if not won:
                    log.info("job %s was already completed by another worker", lease.job_id)
                    return
            slot.release()
            if delivery is not None:
                await self._deliver(delivery)
            await self.queue.ack(lease)
        except asyncio.CancelledError:
            raise
        except Exception:  # the queue failed (e.g. Redis down): the lease stays pending, to be reclaimed
            log.exception("job %s: queue operation failed", lease.job_id)
        finally:
            self._held.pop(lease.entry, None)
            slot.release()

    async def _run(self, claim: Claim) -> Completed:
        job = claim.job
        assert job is not None
        if claim.stopped:  # cancelled while an earlier run ran, and that run's worker died
            return cancelled()
        if claim.attempt > self.settings.max_attempts:
            log.error("job %s abandoned after %d attempts", job.id, claim.attempt - 1)
            return to_completed(failed(f"the job was abandoned after {claim.attempt - 1} attempts"))
        limit = self.settings.job_timeout_s
        deadline = asyncio.timeout(limit if limit > 0 else None)
        run = self._runs[job.id] = asyncio.create_task(self.runner(job), name=f"run-{job.id}")
        try:
            async with deadline:
                outcome = await run
        except asyncio.CancelledError:
            if job.id not in self._stopped or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # the worker is stopping (or its task was cancelled): the job is reclaimed later
            return cancelled()
        except Exception as exc:
            outcome = (failed(f"the job did not finish within {limit:g} s", 504, type="timeout", code="timeout")
                       if deadline.expired() else outcome_from_exception(exc))
        finally:
            del self._runs[job.id]
            self._stopped.discard(job.id)
        if not isinstance(outcome, JobOutcome):
            log.error("job runner returned %s, not a JobOutcome", type(outcome).__name__)
            outcome = failed("internal server error")
        return to_completed(outcome)

    async def _deliver(self, delivery: Delivery) -> None:
        """Attempts up to ``webhook.attempts`` with exponential backoff (counted from each failure),
        resuming a dead worker's count and schedule."""
        cfg = self.settings.webhook
        outcome = "give_up" if self.webhooks is None else "retry"
        while outcome == "retry" and delivery.attempts < cfg.attempts:
            wait = delivery.next_at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            assert self.webhooks is not None
            outcome = await self.webhooks.send(delivery)
            if outcome != "ok":
                next_at = time.time() + backoff(delivery.attempts + 1, cfg.base_delay_s, cfg.max_delay_s)
                delivery.attempts = await self.queue.webhook_attempt(delivery.job_id, next_at)
                delivery.next_at = next_at
                if delivery.attempts == 0:
                    return  # the job expired meanwhile
        if outcome != "ok":
            log.warning("webhook for job %s not delivered after %d attempts", delivery.job_id, delivery.attempts)
        await self.queue.webhook_done(delivery.job_id, outcome == "ok")
