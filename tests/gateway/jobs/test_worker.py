"""The worker on both backends: runs jobs, stores outcomes, survives a dead worker (reclaim after the
visibility timeout), heartbeats long jobs, stores and webhooks a doubly-completed job once."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from tests.gateway.jobs.conftest import eventually, fast_settings
from tests.gateway.limits.support import make_caller, make_limiter
from vlm_gateway.errors import ImageError
from vlm_gateway.jobs import Worker, failed, succeeded
from vlm_gateway.jobs.webhooks import WebhookSender
from vlm_gateway.state import MemoryState


def make_worker(queue, runner, settings, session=None, name=None, **over) -> Worker:
    settings = msgspec.structs.replace(settings, **over) if over else settings
    hooks = WebhookSender(session, settings.webhook) if session is not None else None
    return Worker(queue, runner, settings=settings, webhooks=hooks, name=name)


def mute(worker: Worker, *loops: str) -> Worker:
    """Silence some of a worker's loops (``heartbeat``, ``reclaim``): a stalled, not dead, worker."""
    async def idle() -> None:
        await asyncio.Event().wait()

    for loop in loops:
        setattr(worker, f"_{loop}_loop", idle)
    return worker


async def done(queue, job_id: str):
    async def check():
        view = await queue.result(job_id)
        return view if view.state == "done" else None
    return await eventually(check)


async def echo(job):
    return succeeded({"kind": job.kind, "model": job.model, "body": msgspec.json.decode(job.body)})


async def test_a_job_waiting_for_its_keys_limits_lets_other_keys_jobs_run(queue, settings) -> None:
    """Alice's key (1 concurrent request) is busy: her jobs wait for it without holding the worker's
    one slot, so Bob's job runs meanwhile; hers run once her key is free, one at a time."""
    limiter = make_limiter(MemoryState())
    _, alice = await make_caller(limiter, name="alice", rpm=0, concurrency=1)
    busy = await limiter.admit(alice, ("m",))  # her key's one slot, taken by a request elsewhere
    ran: list[str] = []

    async def runner(job):
        who = msgspec.json.decode(job.body)["who"]
        if who == "alice":
            permit = await limiter.admit_waiting(alice, ("m",))
            await permit.release(0)
        ran.append(who)
        return succeeded({"who": who})

    worker = make_worker(queue, runner, settings, concurrency=1)
    await worker.start()
    try:
        hers = [await queue.submit("chat", "m", msgspec.json.encode({"who": "alice"})) for _ in range(3)]
        bobs = await queue.submit("chat", "m", msgspec.json.encode({"who": "bob"}))
        assert (await done(queue, bobs.id)).result.ok and ran == ["bob"]
        assert worker.aside + worker.busy == 3  # (one of hers may be trying again, in the slot)
        await busy.release(0)
        for job in hers:
            assert (await done(queue, job.id)).result.ok
        assert ran == ["bob", "alice", "alice", "alice"]

        async def idle():
            return worker.aside == 0 and worker.busy == 0
        await eventually(idle)
    finally:
        await worker.stop()
        await limiter.close()


async def test_runs_jobs_within_concurrency(queue, settings) -> None:
    running, peak = 0, 0

    async def runner(job):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.03)
        running -= 1
        return await echo(job)

    worker = make_worker(queue, runner, settings, concurrency=2)
    await worker.start()
    try:
        jobs = [await queue.submit("chat", "m", msgspec.json.encode({"i": i})) for i in range(6)]
        for i, job in enumerate(jobs):
            view = await done(queue, job.id)
            assert msgspec.json.decode(view.result.body) == {"kind": "chat", "model": "m", "body": {"i": i}}
        assert peak == 2
    finally:
        await worker.stop()


@pytest.mark.parametrize("outcome,status,body", [
    (failed("engine down", 503, code="engine_unavailable"), 503,
     {"message": "engine down", "type": "service_unavailable", "param": None, "code": "engine_unavailable"}),
    (ImageError("cannot decode", param="messages[0].content"), 400,
     {"message": "cannot decode", "type": "invalid_request_error", "param": "messages[0].content",
      "code": "invalid_image"}),
    (RuntimeError("boom"), 500,
     {"message": "internal server error", "type": "server_error", "param": None, "code": None}),
    (succeeded(b"not json"), 500, None),
])
async def test_failures_are_stored_as_the_sync_route_renders_them(queue, settings, outcome, status, body) -> None:
    async def runner(job):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    worker = make_worker(queue, runner, settings)
    await worker.start()
    try:
        job = await queue.submit("chat", "m", b"{}")
        view = await done(queue, job.id)
    finally:
        await worker.stop()
    assert not view.result.ok and view.result.status_code == status and view.error
    if body is not None:
        assert msgspec.json.decode(view.result.body) == {"error": body}


async def test_bytes_payload_is_stored_verbatim(queue, settings) -> None:
    async def runner(job):
        return succeeded(b'{"id": "x",  "choices": []}')

    worker = make_worker(queue, runner, settings)
    await worker.start()
    try:
        view = await done(queue, (await queue.submit("chat", "m", b"{}")).id)
    finally:
        await worker.stop()
    assert view.result.body == b'{"id": "x",  "choices": []}'


async def test_job_timeout(queue, settings) -> None:
    async def runner(job):
        await asyncio.sleep(5)

    worker = make_worker(queue, runner, settings, job_timeout_s=0.05)
    await worker.start()
    try:
        view = await done(queue, (await queue.submit("chat", "m", b"{}")).id)
    finally:
        await worker.stop()
    assert view.result.status_code == 504


class Gate:
    """A runner that records who ran what and blocks until released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.jobs: list[str] = []

    async def __call__(self, job):
        self.jobs.append(job.id)
        self.started.set()
        await self.release.wait()
        return succeeded({"by": self.name})


async def dies_running_a_job(queue, settings):
    """A job whose worker died while it ran it (its task cancelled, nothing acked or released)."""
    a = Gate("a")
    worker_a = make_worker(queue, a, settings, name="a")
    await worker_a.start()
    job = await queue.submit("chat", "m", b"{}")
    await asyncio.wait_for(a.started.wait(), 5)
    await worker_a.stop(0, release=False)
    assert (await queue.status(job.id)).state == "running"
    return job


async def taken_over(queue, settings, job):
    """The job's view once a second worker (b, whose runs end at once) has reclaimed and finished it."""
    b = Gate("b")
    b.release.set()
    worker_b = make_worker(queue, b, settings, name="b")
    await worker_b.start()
    try:
        return await done(queue, job.id), b
    finally:
        await worker_b.stop()


async def test_a_dead_workers_job_is_reclaimed_and_completed(queue, settings) -> None:
    job = await dies_running_a_job(queue, settings)
    died = time.monotonic()
    view, b = await taken_over(queue, settings, job)
    assert time.monotonic() - died >= settings.visibility_timeout_s * 0.9
    assert msgspec.json.decode(view.result.body) == {"by": "b"} and b.jobs == [job.id]


async def test_a_job_cancelled_while_its_dead_worker_ran_it_is_not_run_again(queue, settings) -> None:
    """A running job's cancel is carried out by its worker at its next heartbeat; where that worker died,
    the worker that reclaims the job stores it cancelled (and sends its webhook) instead of running it."""
    from vlm_gateway.jobs.types import cancelled

    job = await dies_running_a_job(queue, settings)
    assert await queue.cancel(job.id) == "requested"
    view, b = await taken_over(queue, settings, job)
    assert view.result == cancelled() and b.jobs == []  # b never ran it
    assert await queue.cancel(job.id) == "cancelled"


async def test_heartbeats_keep_a_long_job_with_its_worker(queue, settings) -> None:
    a, b = Gate("a"), Gate("b")
    worker_a, worker_b = make_worker(queue, a, settings, name="a"), make_worker(queue, b, settings, name="b")
    await worker_a.start()
    job = await queue.submit("chat", "m", b"{}")
    await asyncio.wait_for(a.started.wait(), 5)
    await worker_b.start()
    try:
        await asyncio.sleep(settings.visibility_timeout_s * 3)
        a.release.set()
        view = await done(queue, job.id)
    finally:
        await asyncio.gather(worker_a.stop(), worker_b.stop())
    assert b.jobs == [] and msgspec.json.decode(view.result.body) == {"by": "a"}


async def test_double_completion_is_stored_and_webhooked_once(queue, settings, session, receiver) -> None:
    a, b = Gate("a"), Gate("b")
    # a neither heartbeats nor reclaims: b takes the job over while a is still running it; both finish it
    worker_a = mute(make_worker(queue, a, settings, session, name="a"), "heartbeat", "reclaim")
    worker_b = make_worker(queue, b, settings, session, name="b")
    await worker_a.start()
    job = await queue.submit("chat", "m", b"{}", webhook=receiver.url)
    await asyncio.wait_for(a.started.wait(), 5)
    await worker_b.start()
    try:
        await asyncio.wait_for(b.started.wait(), 5)
        a.release.set()
        await receiver.wait(1)
        b.release.set()
        await asyncio.sleep(0.3)
        view = await queue.result(job.id)
    finally:
        await asyncio.gather(worker_a.stop(), worker_b.stop())
    assert a.jobs == b.jobs == [job.id]
    assert msgspec.json.decode(view.result.body) == {"by": "a"}
    assert len(receiver.hooks) == 1
    assert msgspec.json.decode(receiver.hooks[0].body)["payload"] == {"by": "a"}


async def test_a_job_that_keeps_killing_workers_is_abandoned(queue, settings) -> None:
    a = Gate("a")
    worker_a = make_worker(queue, a, settings, name="a", max_attempts=1)
    await worker_a.start()
    job = await queue.submit("chat", "m", b"{}")
    await asyncio.wait_for(a.started.wait(), 5)
    await worker_a.stop(0, release=False)
    b = Gate("b")
    worker_b = make_worker(queue, b, settings, name="b", max_attempts=1)
    await worker_b.start()
    try:
        view = await done(queue, job.id)
    finally:
        await worker_b.stop()
    assert b.jobs == [] and view.result.status_code == 500 and "abandoned" in view.error


async def test_graceful_stop_releases_running_jobs_at_once(make_queue) -> None:
    settings = fast_settings(visibility_timeout_s=30.0)
    queue = make_queue(settings)
    a, b = Gate("a"), Gate("b")
    b.release.set()
    worker_a = make_worker(queue, a, settings, name="a")
    await worker_a.start()
    job = await queue.submit("chat", "m", b"{}")
    await asyncio.wait_for(a.started.wait(), 5)
    await worker_a.stop(grace_s=0.05)
    worker_b = make_worker(queue, b, settings, name="b")
    await worker_b.start()
    try:
        view = await done(queue, job.id)
    finally:
        await worker_b.stop()
    assert msgspec.json.decode(view.result.body) == {"by": "b"}


async def test_graceful_stop_lets_short_jobs_finish(queue, settings) -> None:
    async def runner(job):
        await asyncio.sleep(0.1)
        return succeeded({"ok": True})

    worker = make_worker(queue, runner, settings)
    await worker.start()
    job = await queue.submit("chat", "m", b"{}")
    await eventually(lambda: _running(queue, job.id))
    await worker.stop(grace_s=2)
    assert (await queue.result(job.id)).result.ok


async def _running(queue, job_id):
    return (await queue.status(job_id)).state == "running"


async def test_a_worker_never_reclaims_and_reruns_its_own_running_job(queue, settings) -> None:
    a = Gate("a")
    worker = mute(make_worker(queue, a, settings, name="a"), "heartbeat")  # no heartbeats: only reclaims
    await worker.start()
    try:
        job = await queue.submit("chat", "m", b"{}")
        await asyncio.wait_for(a.started.wait(), 5)
        await asyncio.sleep(settings.visibility_timeout_s * 3)
        a.release.set()
        await done(queue, job.id)
    finally:
        await worker.stop()
    assert a.jobs == [job.id]
