"""The batch jobs when replicas die: a line job redelivered after it recorded its line, a duplicate
job of a line (a fan-out redelivered mid-way), a line whose runs keep dying, a fan-out resumed where it
stopped, and a batch past its completion window; a batch that keeps at most ``max_queued_lines`` of its
lines on the queue. The jobs are called directly, as a worker would call them, on the memory store and
on Redis; the request runner is a fake. The last test runs a real worker on the memory queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from types import SimpleNamespace

import msgspec
import pytest
import pytest_asyncio

from tests.gateway.state.fixtures import redis_session
from vlm_gateway.batches import runner as runner_module
from vlm_gateway.batches.lines import parse_input
from vlm_gateway.batches.redis import RedisBatches
from vlm_gateway.batches.runner import FAN_OUT, LINE, with_batches
from vlm_gateway.batches.service import BatchService
from vlm_gateway.batches.settings import BatchSettings
from vlm_gateway.batches.store import BatchRecord, MemoryBatches
from vlm_gateway.files import FileSettings
from vlm_gateway.files.store import build_file_store
from vlm_gateway.jobs import MemoryJobQueue, Worker, succeeded
from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.jobs.types import Job
from vlm_gateway.limits.rate import ADMISSION_WAIT, Caller
from vlm_gateway.schemas.batches import Batch, BatchRequestCounts
from vlm_gateway.settings import Settings

ALICE = Caller("alice", "alice", rpm=0, concurrency=0, tpm=None, models=None)


class FakeRunner:
    """Answers every request; records what ran."""

    def __init__(self) -> None:
        self.ran: list[bytes] = []
        self.delay_s = 0.0

    async def __call__(self, job: Job):
        self.ran.append(job.body)
        await asyncio.sleep(self.delay_s)
        return succeeded({"object": "chat.completion", "echo": json.loads(job.body)["messages"][0]["content"]})


class FakeQueue:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    async def submit(self, kind, model, body, webhook=None, metadata=None, caller=None) -> Job:
        job = Job(id=uuid.uuid4().hex, kind=kind, model=model, body=body, metadata=metadata or {}, caller=caller)
        self.jobs.append(job)
        return job


class World(msgspec.Struct):
    service: BatchService
    runner: FakeRunner
    queue: FakeQueue
    run: object


@pytest_asyncio.fixture(params=["memory", "redis"])
async def world(request, tmp_path):
    settings = Settings(files=FileSettings(dir=str(tmp_path / "files")),
                        jobs=JobSettings(max_attempts=3, job_timeout_s=0.5), batches=BatchSettings(enqueue_chunk=2))
    queue, runner = FakeQueue(), FakeRunner()

    def build(store) -> World:
        service = BatchService(store, settings.batches, build_file_store(settings),
                               services=lambda: SimpleNamespace(settings=settings),
                               jobs=lambda: SimpleNamespace(queue=queue), responses=lambda: None)
        return World(service, runner, queue, with_batches(runner, service))

    if request.param == "memory":
        yield build(MemoryBatches(ttl_s=3600))
        return
    prefix = f"test:batches:{uuid.uuid4().hex[:12]}:"
    async with redis_session(prefix) as redis:
        yield build(RedisBatches(redis, prefix, 3600))


def chat(custom_id: str) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": custom_id}]}}


async def new_batch(world: World, count: int, *, expires_in: float = 3600) -> BatchRecord:
    data = b"".join(json.dumps(chat(f"c{i}")).encode() + b"\n" for i in range(count))
    file = await world.service.files.create(ALICE, data, "in.jsonl", "batch")
    now = time.time()
    batch = Batch(id=f"batch_{uuid.uuid4().hex}", endpoint="/v1/chat/completions", input_file_id=file.id,
                  status="validating", created_at=int(now), expires_at=int(now + expires_in),
                  request_counts=BatchRequestCounts(total=count))
    record = BatchRecord(ALICE.key_id, time.time_ns() // 1000, batch)
    await world.service.store.create(record)
    return record


def fan_out_job(record: BatchRecord) -> Job:
    return Job(id=uuid.uuid4().hex, kind=FAN_OUT, model="m", body=record.id.encode(), caller=ALICE)


async def output(world: World, batch_id: str) -> tuple[Batch, list[dict], list[dict]]:
    batch = await world.service.retrieve(ALICE, batch_id)

    async def lines(file_id: str | None) -> list[dict]:
        if file_id is None:
            return []
        data = (await world.service.files.open(ALICE, file_id)).data
        return [json.loads(line) for line in data.splitlines()]

    return batch, await lines(batch.output_file_id), await lines(batch.error_file_id)


async def test_fan_out_resumes_and_redelivered_lines_count_once(world) -> None:
    record = await new_batch(world, 5)
    await world.service.store.set_enqueued(record.id, 2)  # a fan-out that died after its first chunk...
    await world.run(fan_out_job(record))  # ...redelivered: it goes on from line 2
    assert [j.metadata["index"] for j in world.queue.jobs] == [2, 3, 4]
    await world.run(fan_out_job(record))  # and again: nothing is left to queue
    early = [Job(id=uuid.uuid4().hex, kind=LINE, model="m", body=line.body, caller=ALICE,
                 metadata={"batch_id": record.id, "index": line.index, "custom_id": line.custom_id})
             for line in parse_input((await world.service.files.open(ALICE, record.batch.input_file_id)).data,
                                     "/v1/chat/completions", 10)[:2]]
    jobs = early + world.queue.jobs
    for job in jobs:
        await world.run(job)
    for job in jobs:  # every job redelivered after it ran (its replica died before the ack)
        await world.run(job)
    assert len(world.runner.ran) == 5  # each line ran once, duplicates and redeliveries did nothing
    batch, out, errors = await output(world, record.id)
    assert batch.status == "completed" and batch.request_counts == BatchRequestCounts(total=5, completed=5)
    assert [line["custom_id"] for line in out] == [f"c{i}" for i in range(5)] and errors == []
    assert out[3]["response"]["body"]["echo"] == "c3"


async def test_a_line_whose_runs_keep_dying_is_failed(world) -> None:
    record = await new_batch(world, 1)
    await world.run(fan_out_job(record))
    [job] = world.queue.jobs
    store = world.service.store
    assert await store.begin_line(record.id, 0, job.id) == 1  # two runs that died with their replicas
    assert await store.begin_line(record.id, 0, job.id) == 2
    await world.run(job)  # the last attempt the worker allows (jobs.max_attempts = 3)
    assert world.runner.ran == []
    batch, out, errors = await output(world, record.id)
    assert batch.status == "completed" and batch.request_counts == BatchRequestCounts(total=1, failed=1)
    assert out == [] and errors[0]["error"]["code"] == "request_abandoned"


async def test_a_batch_past_its_window_expires(world) -> None:
    record = await new_batch(world, 3, expires_in=-1)
    await world.service.move(record, "in_progress")
    await world.service.store.set_enqueued(record.id, 3)
    listed = await world.service.page(ALICE)  # nothing ran: a read finalizes it, the list's as well
    assert [(b.id, b.status) for b in listed.data] == [(record.id, "expired")]
    batch, out, errors = await output(world, record.id)
    assert batch.status == "expired" and batch.expired_at and batch.request_counts.completed == 0
    assert out == [] and [e["custom_id"] for e in errors] == ["c0", "c1", "c2"]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


async def test_a_deleted_input_file_fails_the_batch(world) -> None:
    record = await new_batch(world, 2)
    await world.service.files.delete(ALICE, record.batch.input_file_id)
    await world.run(fan_out_job(record))
    batch = await world.service.retrieve(ALICE, record.id)
    assert batch.status == "failed" and batch.failed_at and batch.errors.data[0].code == "input_file_missing"


async def test_cancel_before_the_fan_out_runs(world) -> None:
    record = await new_batch(world, 2)
    batch = await world.service.cancel(ALICE, record.id)
    assert batch.status == "cancelled" and batch.error_file_id is not None
    await world.run(fan_out_job(record))
    assert world.queue.jobs == []
    _, _, errors = await output(world, record.id)
    assert [e["error"]["code"] for e in errors] == ["batch_cancelled"] * 2


async def test_a_line_over_the_job_time_limit_is_a_failed_504(world) -> None:
    record = await new_batch(world, 1)
    await world.run(fan_out_job(record))
    world.runner.delay_s = 5  # jobs.job_timeout_s is 0.5: the line stops a little before the worker would
    await world.run(world.queue.jobs[0])
    batch, out, errors = await output(world, record.id)
    assert batch.status == "completed" and batch.request_counts == BatchRequestCounts(total=1, failed=1)
    assert errors[0]["response"]["status_code"] == 504 and errors[0]["response"]["body"]["error"]["code"] == "timeout"


async def until(condition, what: str, timeout_s: float = 30) -> None:
    """Wait for ``condition()`` (an event of another task), failing after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not seen within {timeout_s} s: {what}") from None


def windowed(world: World, lines: int, job_timeout_s: float = 0) -> None:
    world.service.settings.max_queued_lines = lines
    world.service.services().settings.jobs.job_timeout_s = job_timeout_s


def queued(world: World, kind: str = LINE) -> list[Job]:
    return [job for job in world.queue.jobs if job.kind == kind]


async def test_a_batch_keeps_at_most_max_queued_lines_on_the_queue(world) -> None:
    windowed(world, 3)
    record = await new_batch(world, 7)
    asides = []

    @contextlib.asynccontextmanager
    async def aside():  # the worker's slot, given up while the fan-out waits
        asides.append(1)
        yield

    async def fan_out() -> None:
        ADMISSION_WAIT.set(aside)
        await world.run(fan_out_job(record))

    task = asyncio.ensure_future(fan_out())
    await until(lambda: len(queued(world)) == 3 and asides, "the first 3 lines queued, then a wait")
    assert not task.done() and asides
    ran = 0
    while ran < 7:  # each line that ends makes room for one more, never more than 3 at once
        await until(lambda: len(queued(world)) >= min(ran + 3, 7), f"line {ran + 3} queued")  # noqa: B023
        assert len(queued(world)) - ran <= 3
        await world.run(queued(world)[ran])
        ran += 1
    await asyncio.wait_for(task, 30)
    batch, out, errors = await output(world, record.id)
    assert batch.status == "completed" and [line["custom_id"] for line in out] == [f"c{i}" for i in range(7)]
    assert queued(world, FAN_OUT) == [] and errors == []


@pytest.mark.parametrize("limit", ["job_timeout_s", "FAN_OUT_RUN_S"])
async def test_a_fan_out_near_its_time_limit_queues_its_own_continuation(world, limit, monkeypatch) -> None:
    windowed(world, 2, job_timeout_s=0.5 if limit == "job_timeout_s" else 0)
    if limit == "FAN_OUT_RUN_S":  # no job time limit: a fan-out job still hands over now and then
        monkeypatch.setattr(runner_module, "FAN_OUT_RUN_S", 0.3)
    record = await new_batch(world, 4)
    await world.run(fan_out_job(record))  # the lines do not run: it waits for room until its time is up
    assert [job.kind for job in world.queue.jobs] == [LINE, LINE, FAN_OUT]
    for job in queued(world):
        await world.run(job)
    await world.run(queued(world, FAN_OUT)[0])  # the continuation goes on from line 2
    assert [job.metadata["index"] for job in queued(world)] == [0, 1, 2, 3]
    for job in queued(world)[2:]:
        await world.run(job)
    batch, out, _ = await output(world, record.id)
    assert batch.status == "completed" and [line["custom_id"] for line in out] == ["c0", "c1", "c2", "c3"]


async def test_a_cancel_stops_a_fan_out_that_waits_for_room(world) -> None:
    windowed(world, 2)
    record = await new_batch(world, 5)
    task = asyncio.ensure_future(world.run(fan_out_job(record)))
    await until(lambda: len(queued(world)) == 2, "the first 2 lines queued")
    await world.service.cancel(ALICE, record.id)
    await asyncio.wait_for(task, 30)  # it stopped: the batch waits for the 2 lines it queued only
    for job in queued(world):
        await world.run(job)
    batch, out, errors = await output(world, record.id)
    assert batch.status == "cancelled" and out == [] and len(queued(world)) == 2
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [(f"c{i}", "batch_cancelled") for i in range(5)]


async def test_a_batch_whose_completion_window_ends_while_its_fan_out_waits_expires(world) -> None:
    windowed(world, 1)
    record = await new_batch(world, 3, expires_in=1)
    await asyncio.wait_for(world.run(fan_out_job(record)), 30)  # waits for room until the window ends
    assert len(queued(world)) == 1
    await world.run(queued(world)[0])  # too late: skipped; the batch waited for that line only
    batch, out, errors = await output(world, record.id)
    assert batch.status == "expired" and out == [] and world.runner.ran == []
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [(f"c{i}", "batch_expired") for i in range(3)]


async def test_a_job_queued_after_a_big_batch_runs_before_the_batch_has_finished(tmp_path) -> None:
    """A real worker (one slot) on the memory queue: the batch's lines take turns with a job queued after
    them, instead of all 40 running first."""
    jobs = JobSettings(concurrency=1, poll_s=0.05)
    settings = Settings(files=FileSettings(dir=str(tmp_path / "files")), jobs=jobs,
                        batches=BatchSettings(max_queued_lines=2))
    queue, runner = MemoryJobQueue(jobs), FakeRunner()
    service = BatchService(MemoryBatches(ttl_s=3600), settings.batches, build_file_store(settings),
                           services=lambda: SimpleNamespace(settings=settings),
                           jobs=lambda: SimpleNamespace(queue=queue), responses=lambda: None)
    world = World(service, runner, queue, with_batches(runner, service))
    record = await new_batch(world, 40)
    worker = Worker(queue, world.run, settings=jobs)
    await worker.start()
    try:
        await queue.submit(FAN_OUT, "m", record.id.encode(), caller=ALICE)
        await until(lambda: len(runner.ran) >= 3, "the batch's first lines ran")
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "later"}]})
        later = await queue.submit("chat", "m", body, caller=ALICE)
        await until(lambda: b"later" in b"".join(runner.ran), "the later job ran")
        assert runner.ran.index(body.encode()) <= 3 + 2 + 1  # behind the lines queued when it came, at most
        assert (await queue.result(later.id)).state == "done"
        await until(lambda: len(runner.ran) == 41, "the whole batch ran")
    finally:
        await worker.stop()
    assert (await service.retrieve(ALICE, record.id)).request_counts.completed == 40


async def test_a_fan_out_stopped_while_it_takes_its_slot_back_has_queued_its_successor(world) -> None:
    """The worker stops a job at ``jobs.job_timeout_s`` wherever it is; a fan-out that waited aside may
    be waiting for its slot then (a line holds it), so its successor is queued before that wait."""
    windowed(world, 2, job_timeout_s=0.5)
    record = await new_batch(world, 4)

    @contextlib.asynccontextmanager
    async def aside():
        yield
        await asyncio.Event().wait()  # every slot is busy: taking one back outlasts the job's time limit

    async def as_the_worker_runs_it() -> None:
        ADMISSION_WAIT.set(aside)
        async with asyncio.timeout(1.0):
            await world.run(fan_out_job(record))

    task = asyncio.ensure_future(as_the_worker_runs_it())
    await until(lambda: queued(world, FAN_OUT), "the successor queued")
    assert [job.kind for job in world.queue.jobs] == [LINE, LINE, FAN_OUT]
    try:
        await task
    except TimeoutError:
        pass  # stopped by the (stand-in) worker's limit: nothing is lost


async def test_a_cancelled_batch_read_after_its_window_waits_for_the_line_it_runs(world) -> None:
    """Cancelling promises that the lines running finish and are in the output: a read past the window
    does not end the batch under them (it did, and called the line "cancelled before it ran")."""
    windowed(world, 0)  # (no job time limit)
    record = await new_batch(world, 2, expires_in=1)
    await world.run(fan_out_job(record))
    world.runner.delay_s = 1.5  # past the window
    running = asyncio.ensure_future(world.run(queued(world)[0]))
    await until(lambda: world.runner.ran, "the first line running")
    await world.service.cancel(ALICE, record.id)
    await until(lambda: time.time() >= record.batch.expires_at, "the window's end")
    assert (await world.service.retrieve(ALICE, record.id)).status == "cancelling"
    await running
    await world.run(queued(world)[1])  # (skipped: cancelled)
    batch, out, errors = await output(world, record.id)
    assert batch.status == "cancelled" and [line["custom_id"] for line in out] == ["c0"]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("c1", "batch_cancelled")]


async def test_a_fan_out_that_never_waits_still_hands_over_in_time(world, monkeypatch) -> None:
    """Room all along (lines end as fast as they are queued) is no reason to run past the job's time:
    it hands over after a chunk once its time is up (the worker would stop it mid-way otherwise)."""
    windowed(world, 100)
    monkeypatch.setattr(runner_module, "FAN_OUT_RUN_S", 0.0)
    record = await new_batch(world, 5)  # the fixture's enqueue_chunk: 2
    await world.run(fan_out_job(record))
    assert [job.kind for job in world.queue.jobs] == [LINE, LINE, FAN_OUT]  # one chunk, then its successor
    await world.run(queued(world, FAN_OUT)[0])
    assert [job.metadata["index"] for job in queued(world)] == [0, 1, 2, 3]
