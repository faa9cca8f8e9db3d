"""The queue's semantics, identical on both backends: submit, status and position, begin/complete once,
cancel, result TTL, webhook progress, reclaim after the visibility timeout."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from tests.gateway.jobs.conftest import fast_settings
from vlm_gateway.errors import InvalidRequest, NotFound
from vlm_gateway.jobs.types import cancelled, failed, succeeded, to_completed

OK = to_completed(succeeded({"answer": 42}))


async def test_submit_then_status_and_positions(queue) -> None:
    jobs = [await queue.submit("chat", "m", b'{"messages": []}', metadata={"n": i}) for i in range(3)]
    assert jobs[0].kind == "chat" and jobs[0].model == "m" and jobs[0].body == b'{"messages": []}'
    assert jobs[2].metadata == {"n": 2} and jobs[0].created > 0 and len({j.id for j in jobs}) == 3
    views = [await queue.status(j.id) for j in jobs]
    assert [(v.state, v.position) for v in views] == [("queued", 0), ("queued", 1), ("queued", 2)]

    leases = await queue.take("c1", 1, 0.1)
    assert [lease.job_id for lease in leases] == [jobs[0].id]
    claim = await queue.begin(leases[0], "c1")
    assert claim.action == "run" and claim.attempt == 1 and claim.job == jobs[0]
    assert (await queue.status(jobs[0].id)).state == "running"
    assert [(await queue.status(j.id)).position for j in jobs[1:]] == [0, 1]


async def test_backlog_counts_unfinished_jobs(queue) -> None:
    assert await queue.backlog() == (0, 0.0)
    jobs = [await queue.submit("chat", "m", b"{}") for _ in range(3)]
    depth, oldest = await queue.backlog()
    assert depth == 3 and oldest >= 0
    lease, = await queue.take("c", 1, 0.1)
    await queue.begin(lease, "c")
    assert (await queue.backlog())[0] == 3  # running still counts
    await queue.complete(lease, OK)
    await queue.ack(lease)
    assert (await queue.backlog())[0] == 2
    assert lease.job_id == jobs[0].id


async def test_str_body_is_stored_as_bytes(queue) -> None:
    job = await queue.submit("completion", "m", '{"prompt": "hé"}')
    assert job.body == '{"prompt": "hé"}'.encode()
    lease, = await queue.take("c", 5, 0.1)
    assert (await queue.begin(lease, "c")).job.body == job.body


async def test_unknown_id_is_not_found(queue) -> None:
    for call in (queue.status, queue.result, queue.cancel):
        with pytest.raises(NotFound):
            await call("nope")


async def test_complete_once_then_result(queue) -> None:
    job = await queue.submit("chat", "m", b"{}")
    lease, = await queue.take("c", 5, 0.1)
    await queue.begin(lease, "c")
    assert (await queue.result(job.id)).result is None
    assert await queue.complete(lease, OK) == (True, None)
    assert await queue.complete(lease, to_completed(succeeded({"answer": 0}))) == (False, None)
    view = await queue.result(job.id)
    assert view.state == "done" and view.error is None
    assert msgspec.json.decode(view.result.body) == {"answer": 42} and view.result.ok
    await queue.ack(lease)
    assert await queue.take("c", 5, 0.05) == [] and await queue.reclaim("c", 5) == []


async def test_failure_is_stored_as_openai_error(queue) -> None:
    job = await queue.submit("chat", "m", b"{}")
    lease, = await queue.take("c", 5, 0.1)
    await queue.begin(lease, "c")
    await queue.complete(lease, to_completed(failed("bad image", 400, code="invalid_image", param="messages")))
    view = await queue.result(job.id)
    assert view.error == "bad image" and (await queue.status(job.id)).error == "bad image"
    assert not view.result.ok and view.result.status_code == 400
    assert msgspec.json.decode(view.result.body) == {"error": {
        "message": "bad image", "type": "invalid_request_error", "param": "messages", "code": "invalid_image"}}


async def test_cancel_before_start_and_while_running(queue) -> None:
    first, second = [await queue.submit("chat", "m", b"{}") for _ in range(2)]
    assert await queue.cancel(second.id) == "cancelled"
    assert await queue.cancel(second.id) == "cancelled"  # idempotent
    view = await queue.result(second.id)
    assert view.state == "done" and view.result == cancelled() and view.error
    lease, = await queue.take("c", 1, 0.1)
    assert (await queue.begin(lease, "c")).action == "run"
    assert await queue.heartbeat("c", [lease]) == set()
    assert await queue.cancel(first.id) == "requested"  # running: its worker is told at its next heartbeat
    assert await queue.heartbeat("c", [lease]) == {first.id}
    await queue.complete(lease, OK)  # (it finished before its worker stopped it)
    assert await queue.heartbeat("c", [lease]) == set()
    assert await queue.cancel(first.id) == "finished"
    skipped, = await queue.take("c", 1, 0.1)  # the cancelled one is skipped, never run
    assert skipped.job_id == second.id and (await queue.begin(skipped, "c")).action == "ack"


async def test_a_job_stopped_while_running_reads_as_cancelled(queue) -> None:
    job = await queue.submit("chat", "m", b"{}")
    lease, = await queue.take("c", 1, 0.1)
    await queue.begin(lease, "c")
    assert await queue.cancel(job.id) == "requested"
    await queue.complete(lease, cancelled())
    assert await queue.cancel(job.id) == "cancelled"
    view = await queue.status(job.id)
    assert (view.kind, view.state) == ("chat", "done") and abs(view.created - job.created) < 1e-3


async def test_a_job_cancelled_in_the_queue_still_sends_its_webhook(queue) -> None:
    job = await queue.submit("chat", "m", b"{}", webhook="https://hooks.example/x")
    assert await queue.cancel(job.id) == "cancelled"
    lease, = await queue.take("c", 1, 0.1)
    claim = await queue.begin(lease, "c")
    assert claim.action == "deliver" and claim.delivery.result == cancelled()


async def test_position_skips_past_cancelled_jobs(queue) -> None:
    jobs = [await queue.submit("chat", "m", b"{}") for _ in range(4)]
    await queue.cancel(jobs[1].id)
    for lease in await queue.take("c", 3, 0.1):
        await queue.begin(lease, "c")
    assert (await queue.status(jobs[3].id)).position == 0


async def test_result_expires_after_ttl(make_queue) -> None:
    queue = make_queue(fast_settings(result_ttl_s=0.2))
    await queue.start()
    job = await queue.submit("chat", "m", b"{}")
    lease, = await queue.take("c", 1, 0.1)
    await queue.begin(lease, "c")
    await queue.complete(lease, OK)
    assert (await queue.status(job.id)).state == "done"
    await asyncio.sleep(0.3)
    with pytest.raises(NotFound):
        await queue.result(job.id)
    with pytest.raises(NotFound):
        await queue.status(job.id)


async def test_reclaim_after_visibility_timeout_unless_heartbeating(queue, settings) -> None:
    alive, dead = [await queue.submit("chat", "m", b"{}") for _ in range(2)]
    leases = await queue.take("a", 2, 0.1)
    for lease in leases:
        await queue.begin(lease, "a")
    for _ in range(int(settings.visibility_timeout_s / 0.05) + 4):
        await queue.heartbeat("a", [leases[0]])
        await asyncio.sleep(0.05)
    reclaimed = await queue.reclaim("b", 5)
    assert [lease.job_id for lease in reclaimed] == [dead.id]
    claim = await queue.begin(reclaimed[0], "b")
    assert claim.action == "run" and claim.attempt == 2 and claim.job.id == dead.id
    assert alive.id != dead.id


async def test_release_makes_a_lease_reclaimable_at_once(queue) -> None:
    await queue.submit("chat", "m", b"{}")
    leases = await queue.take("a", 1, 0.1)
    assert await queue.reclaim("b", 5) == []
    await queue.release("a", leases)
    assert [lease.job_id for lease in await queue.reclaim("b", 5)] == [leases[0].job_id]


async def test_webhook_progress_is_persisted(queue) -> None:
    job = await queue.submit("chat", "m", b"{}", webhook="http://127.0.0.1:9/hook")
    lease, = await queue.take("a", 1, 0.1)
    await queue.begin(lease, "a")
    won, delivery = await queue.complete(lease, OK)
    assert won and delivery.url == "http://127.0.0.1:9/hook" and delivery.attempts == 0
    assert delivery.result == OK
    assert await queue.webhook_attempt(job.id, 123.5) == 1
    assert await queue.webhook_attempt(job.id, 124.5) == 2
    # another worker picking the same entry up (its worker died) resumes the delivery where it was
    claim = await queue.begin(lease, "b")
    assert claim.action == "deliver"
    assert (claim.delivery.attempts, claim.delivery.next_at, claim.delivery.result) == (2, 124.5, OK)
    await queue.webhook_done(job.id, True)
    assert (await queue.begin(lease, "b")).action == "ack"
    assert (await queue.result(job.id)).result == OK


async def test_webhook_keeps_the_job_past_its_ttl_until_delivered(make_queue) -> None:
    queue = make_queue(fast_settings(result_ttl_s=0.1))
    await queue.start()
    job = await queue.submit("chat", "m", b"{}", webhook="http://127.0.0.1:9/hook")
    lease, = await queue.take("a", 1, 0.1)
    await queue.begin(lease, "a")
    await queue.complete(lease, OK)
    await asyncio.sleep(0.2)
    with pytest.raises(NotFound):  # the result is no longer readable...
        await queue.status(job.id)
    assert (await queue.begin(lease, "b")).action == "deliver"  # ...but the webhook is not lost
    await queue.webhook_done(job.id, False)
    assert (await queue.begin(lease, "b")).action == "ack"


async def test_webhook_is_vetted_at_submission(make_queue) -> None:
    async def vet(url: str) -> None:
        if "evil" in url:
            raise InvalidRequest("no", param="webhook", code="url_not_allowed")

    queue = make_queue(fast_settings(), vet)
    with pytest.raises(InvalidRequest):
        await queue.submit("chat", "m", b"{}", webhook="http://evil.example/")
    with pytest.raises(InvalidRequest):
        await queue.submit("chat", "m", b"{}", webhook="")
    assert (await queue.submit("chat", "m", b"{}", webhook="http://good.example/")).webhook


async def test_a_second_queue_object_sees_the_same_jobs(make_queue, settings) -> None:
    """Two replicas (two queue objects over one prefix) share jobs."""
    a, b = make_queue(settings), make_queue(settings)
    await a.start()
    await b.start()
    job = await a.submit("chat", "m", b"{}")
    lease, = await b.take("b", 1, 0.2)
    assert lease.job_id == job.id and (await b.begin(lease, "b")).job == job
    assert (await a.status(job.id)).state == "running"


@pytest.mark.parametrize("bad", [{"heartbeat_s": 40.0}, {"concurrency": 0}, {"result_ttl_s": 0}])
def test_settings_are_checked(bad) -> None:
    from vlm_gateway.jobs.settings import JobSettings

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"visibility_timeout_s": 60.0, **bad}, JobSettings)
    assert msgspec.convert({"webhook": {"secret": "s"}}, JobSettings).webhook.attempts >= 6
