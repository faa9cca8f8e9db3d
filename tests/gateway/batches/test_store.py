"""The batch store's contract on both backends: counting each line once (also from two Redis clients
at once, as two replicas), claims that survive a redelivery, compare-and-set status moves, pages."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest_asyncio

from tests.gateway.state.fixtures import redis_session
from vlm_gateway.batches.redis import RedisBatches
from vlm_gateway.batches.store import ALREADY_RECORDED, CLAIMED_ELSEWHERE, BatchRecord, MemoryBatches
from vlm_gateway.schemas.batches import Batch, BatchRequestCounts


def record(owner: str = "alice", total: int = 3, status: str = "in_progress") -> BatchRecord:
    batch = Batch(id="batch_" + uuid.uuid4().hex, endpoint="/v1/chat/completions", input_file_id="file-x",
                  status=status, created_at=int(time.time()), request_counts=BatchRequestCounts(total=total))  # type: ignore[arg-type]
    return BatchRecord(owner, time.time_ns() // 1000, batch)


@pytest_asyncio.fixture(params=["memory", "redis"])
async def stores(request):
    """Two handles on one store (two replicas on Redis; one process's store twice in memory)."""
    if request.param == "memory":
        store = MemoryBatches(ttl_s=60)
        yield store, store
        return
    prefix = f"test:batches:{uuid.uuid4().hex[:12]}:"
    async with redis_session(prefix) as one, redis_session(prefix) as two:
        yield RedisBatches(one, prefix, 60), RedisBatches(two, prefix, 60)


async def test_create_get_and_view(stores) -> None:
    store, _ = stores
    made = record(total=5)
    await store.create(made)
    got = await store.get(made.id)
    assert got is not None and got.batch == made.batch and got.owner == "alice"
    assert (got.counts.planned, got.counts.recorded) == (5, 0)
    assert got.view().request_counts == BatchRequestCounts(total=5, completed=0, failed=0)
    assert await store.get("batch_nope") is None


async def test_each_line_is_counted_once_across_replicas(stores) -> None:
    one, two = stores
    made = record(total=40)
    await one.create(made)

    async def line(store, index: int) -> bool:
        kind = "completed" if index % 4 else "failed"
        new, _ = await store.record_line(made.id, index, kind, b'{"n": %d}' % index, 10, 2)
        return new

    firsts = await asyncio.gather(*(line(one if i % 2 else two, i) for i in range(40)))
    again = await asyncio.gather(*(line(two if i % 2 else one, i) for i in range(40)))  # redeliveries
    assert all(firsts) and not any(again)
    got = await one.get(made.id)
    assert (got.counts.completed, got.counts.failed, got.counts.recorded) == (30, 10, 40)
    assert (got.counts.input_tokens, got.counts.output_tokens) == (400, 80)
    results = await two.results(made.id)
    assert sorted(results) == list(range(40)) and results[3] == ("completed", b'{"n": 3}')
    assert results[4][0] == "failed"


async def test_claims(stores) -> None:
    one, two = stores
    made = record()
    await one.create(made)
    assert await one.begin_line(made.id, 0, "job-a") == 1
    assert await two.begin_line(made.id, 0, "job-b") == CLAIMED_ELSEWHERE  # a duplicate job of the line
    assert await two.begin_line(made.id, 0, "job-a") == 2  # the same job, redelivered after a crash
    await one.record_line(made.id, 0, "completed", b"{}")
    assert await two.begin_line(made.id, 0, "job-a") == ALREADY_RECORDED
    assert await one.begin_line(made.id, 1, "job-c") == 1


async def test_transition_is_a_compare_and_set(stores) -> None:
    one, two = stores
    made = record()
    await one.create(made)
    seen = await one.get(made.id)
    cancel = msgspec.structs.replace(seen, batch=msgspec.structs.replace(seen.batch, status="cancelling"))
    final = msgspec.structs.replace(seen, batch=msgspec.structs.replace(seen.batch, status="finalizing"))
    assert await two.transition(cancel, ("in_progress",))
    assert not await one.transition(final, ("in_progress",))  # it moved meanwhile
    assert (await one.get(made.id)).status == "cancelling"


async def test_an_ended_batch_takes_no_more_lines(stores) -> None:
    store, _ = stores
    made = record(total=2)
    await store.create(made)
    await store.record_line(made.id, 0, "completed", b"{}")
    done = msgspec.structs.replace(made, batch=msgspec.structs.replace(made.batch, status="completed"))
    assert await store.transition(done, ("in_progress",))
    assert await store.begin_line(made.id, 1, "late") == ALREADY_RECORDED
    new, counts = await store.record_line(made.id, 1, "completed", b"{}")
    assert not new and counts.recorded == 1


async def test_a_finalizing_batch_takes_no_more_lines(stores) -> None:
    """Its files are being written from the lines recorded: a late line must not change the counts."""
    store, _ = stores
    made = record(total=2)
    await store.create(made)
    await store.record_line(made.id, 0, "completed", b"{}", 3, 4)
    closing = msgspec.structs.replace(made, batch=msgspec.structs.replace(made.batch, status="finalizing"))
    assert await store.transition(closing, ("in_progress",))
    assert await store.begin_line(made.id, 1, "late") == ALREADY_RECORDED
    new, counts = await store.record_line(made.id, 1, "completed", b"{}", 5, 6)
    assert not new and (counts.recorded, counts.input_tokens) == (1, 3) and set(await store.results(made.id)) == {0}


async def test_planned_and_enqueued(stores) -> None:
    store, _ = stores
    made = record(total=10)
    await store.create(made)
    await store.set_enqueued(made.id, 4)
    await store.record_line(made.id, 0, "skipped", b"{}")
    counts = await store.set_planned(made.id, 4)
    assert (counts.planned, counts.enqueued, counts.skipped, counts.recorded) == (4, 4, 1, 1)
    await store.drop_results(made.id)
    assert await store.results(made.id) == {}


async def test_pages_newest_first_per_owner(stores) -> None:
    store, _ = stores
    made = []
    for _ in range(5):
        made.append(record("bob"))
        await store.create(made[-1])
        await asyncio.sleep(0.001)
    await store.create(record("carol"))
    page, more = await store.page("bob", None, 2)
    assert [r.id for r in page] == [made[4].id, made[3].id] and more
    page, more = await store.page("bob", made[3].id, 5)
    assert [r.id for r in page] == [made[2].id, made[1].id, made[0].id] and not more
    assert await store.page("bob", "batch_nope", 2) is None
    assert await store.page("dave", None, 2) == ([], False)
