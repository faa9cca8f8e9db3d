"""The /queue routes with a fake runner, on both queue backends.

The app runs on the test's own event loop (httpx's ASGI transport, the jobs started by the fixture as
the app's lifespan would) rather than in ``AsyncTestClient``'s portal thread, so the runner's gates, the
Redis client and the webhook receiver all live on one loop.
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import aiohttp
import httpx
import msgspec
import pytest
import pytest_asyncio
from litestar import Litestar

from tests.gateway.jobs.conftest import SECRET, fast_settings, receiver, redis_client  # noqa: F401
from tests.gateway.limits.support import make_limiter
from vlm_gateway.api.auth import require_api_key
from vlm_gateway.api.queue import QUEUE_ROUTES
from vlm_gateway.errors import error_response
from vlm_gateway.jobs import build_jobs, failed, succeeded
from vlm_gateway.jobs.webhooks import verify
from vlm_gateway.limits.rate import ANONYMOUS
from vlm_gateway.state import MemoryState

BASE = "http://testserver.local"


class FakeRunner:
    """Echoes the job; ``{"fail": status}`` bodies fail; blocks while ``gate`` is clear."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.ran: list[str] = []
        self.callers: dict[str, object] = {}

    async def __call__(self, job):
        self.ran.append(job.id)
        self.callers[job.id] = job.caller
        await self.gate.wait()
        body = msgspec.json.decode(job.body)
        if "fail" in body:
            return failed("it failed", body["fail"], code="engine_error")
        return succeeded({"kind": job.kind, "model": job.model, "body": body})


class AnyModel:
    """A model registry where every name exists (the runner here is fake)."""

    def resolve(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(id=name, aliases=())


class Gateway:
    def __init__(self, client: httpx.AsyncClient, runner: FakeRunner, limiter) -> None:
        self.client, self.runner, self.limiter = client, runner, limiter

    async def submit(self, model: str, body, **kw):
        return await self.client.post(f"/queue/{model}", content=msgspec.json.encode(body), **kw)

    async def wait_done(self, request_id: str, **kw) -> dict:
        for _ in range(500):
            status = bare((await self.client.get(f"/queue/requests/{request_id}/status", **kw)).json())
            if status["status"] == "COMPLETED":
                return status
            await asyncio.sleep(0.01)
        raise AssertionError(f"{request_id} not completed: {status}")


def bare(status: dict) -> dict:
    """A status without its URLs (which ``test_status_carries_the_urls`` checks)."""
    return {k: v for k, v in status.items() if k not in ("response_url", "status_url")}


@pytest_asyncio.fixture(params=["memory", "redis"])
async def gw(request):
    redis = await redis_client() if request.param == "redis" else None
    settings = fast_settings(concurrency=1)
    runner = FakeRunner()

    def classify(model, body):
        return "custom" if "custom" in body else default(model, body)

    from vlm_gateway.jobs import default_classify as default

    app = Litestar(route_handlers=QUEUE_ROUTES, exception_handlers={Exception: error_response},
                   middleware=[require_api_key])
    limiter = make_limiter(MemoryState())
    app.state.services = SimpleNamespace(models=AnyModel(), limiter=limiter)
    async with aiohttp.ClientSession() as session:  # what the app's lifespan does, on this task
        jobs = build_jobs(settings, session, runner, redis=redis, classify=classify)
        await jobs.start()
        app.state.jobs = jobs
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
                yield Gateway(client, runner, limiter)
        finally:
            await jobs.stop(grace_s=0)
    if redis is not None:
        keys = [key async for key in redis.scan_iter(match=settings.key_prefix + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


def assert_openai_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    return err


@pytest.mark.parametrize("body,kind", [
    ({"model": "x", "messages": [{"role": "user", "content": "hi"}]}, "chat"),
    ({"prompt": "USER: <image> what?", "images": []}, "completion"),
    ({"image_url": "https://example.com/a.png", "prompt": "what?"}, "fal"),
    ({"custom": 1}, "custom"),
])
async def test_submit_poll_fetch(gw, body, kind) -> None:
    resp = await gw.submit("fal-ai/llava-next", body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    rid = out["request_id"]
    assert out == {"request_id": rid, "status_url": f"{BASE}/queue/requests/{rid}/status",
                   "response_url": f"{BASE}/queue/requests/{rid}", "cancel_url": f"{BASE}/queue/requests/{rid}/cancel"}
    assert await gw.wait_done(rid) == {"status": "COMPLETED"}
    result = await gw.client.get(out["response_url"])
    assert result.status_code == 200
    assert result.json() == {"kind": kind, "model": "fal-ai/llava-next", "body": body}


@pytest.mark.parametrize("content", [b"[1, 2]", b"not json", b'{"neither": 1}'])
async def test_bad_bodies_are_400(gw, content) -> None:
    resp = await gw.client.post("/queue/m", content=content)
    assert_openai_error(resp, 400)


async def test_a_fal_body_without_its_prompt_names_it(gw) -> None:
    resp = await gw.client.post("/queue/m", content=b'{"image_url": "https://example.com/a.png"}')
    assert assert_openai_error(resp, 400)["param"] == "prompt"


async def test_queue_positions_and_202_while_waiting(gw) -> None:
    gw.runner.gate.clear()
    ids = [(await gw.submit("m", {"prompt": str(i)})).json()["request_id"] for i in range(3)]
    for _ in range(200):
        if gw.runner.ran:
            break
        await asyncio.sleep(0.01)
    statuses = [bare((await gw.client.get(f"/queue/requests/{rid}/status")).json()) for rid in ids]
    assert statuses == [{"status": "IN_PROGRESS"}, {"status": "IN_QUEUE", "queue_position": 0},
                        {"status": "IN_QUEUE", "queue_position": 1}]
    waiting = await gw.client.get(f"/queue/requests/{ids[2]}")
    assert waiting.status_code == 202 and bare(waiting.json()) == {"status": "IN_QUEUE", "queue_position": 1}
    gw.runner.gate.set()
    for rid in ids:
        await gw.wait_done(rid)


async def test_cancel(gw) -> None:
    gw.runner.gate.clear()
    running, queued = [(await gw.submit("m", {"prompt": str(i)})).json()["request_id"] for i in range(2)]
    for _ in range(200):
        if gw.runner.ran:
            break
        await asyncio.sleep(0.01)
    resp = await gw.client.put(f"/queue/requests/{queued}/cancel")
    assert resp.status_code == 202 and resp.json() == {"status": "CANCELLATION_REQUESTED"}
    status = await gw.wait_done(queued)
    assert status["error"]
    assert_openai_error(await gw.client.get(f"/queue/requests/{queued}"), 400, "cancelled")
    resp = await gw.client.put(f"/queue/requests/{running}/cancel")  # running: stopped at its next heartbeat
    assert resp.status_code == 202 and resp.json() == {"status": "CANCELLATION_REQUESTED"}
    assert (await gw.wait_done(running))["error"]  # (its gate is still closed: only the cancel ends it)
    assert_openai_error(await gw.client.get(f"/queue/requests/{running}"), 400, "cancelled")
    resp = await gw.client.put(f"/queue/requests/{running}/cancel")
    assert resp.status_code == 202 and resp.json() == {"status": "CANCELLATION_REQUESTED"}
    gw.runner.gate.set()
    done = (await gw.submit("m", {"prompt": "x"})).json()["request_id"]
    await gw.wait_done(done)
    resp = await gw.client.put(f"/queue/requests/{done}/cancel")
    assert resp.status_code == 400 and resp.json() == {"status": "ALREADY_COMPLETED"}
    assert gw.runner.ran == [running, done]  # the job cancelled in the queue never ran


async def test_status_carries_the_urls_and_fals_own_paths_work(gw) -> None:
    """fal's status answers carry ``response_url``; its clients also build the URLs under the model:
    ``/queue/{model}/requests/{id}/status``, ``…/{id}``, ``…/{id}/cancel``."""
    rid = (await gw.submit("fal-ai/llava-next", {"prompt": "p"})).json()["request_id"]
    await gw.wait_done(rid)
    status = (await gw.client.get(f"/queue/requests/{rid}/status")).json()
    assert status["response_url"] == f"{BASE}/queue/requests/{rid}"
    assert status["status_url"] == f"{BASE}/queue/requests/{rid}/status"
    under = f"/queue/fal-ai/llava-next/requests/{rid}"
    assert (await gw.client.get(f"{under}/status")).json() == status
    assert (await gw.client.get(under)).json() == (await gw.client.get(f"/queue/requests/{rid}")).json()
    resp = await gw.client.put(f"{under}/cancel")
    assert resp.status_code == 400 and resp.json() == {"status": "ALREADY_COMPLETED"}
    assert_openai_error(await gw.client.get("/queue/fal-ai/llava-next/requests/nope/status"), 404, "not_found")
    assert_openai_error(await gw.client.get("/queue/fal-ai/llava-next/elsewhere"), 404)


async def test_a_cancelled_job_sends_its_webhook(gw, receiver) -> None:  # noqa: F811
    gw.runner.gate.clear()
    running = (await gw.submit("m", {"prompt": "a"}, params={"webhook": receiver.url})).json()["request_id"]
    queued = (await gw.submit("m", {"prompt": "b"}, params={"fal_webhook": receiver.url})).json()["request_id"]
    for rid in (queued, running):
        assert (await gw.client.put(f"/queue/requests/{rid}/cancel")).status_code == 202
    await receiver.wait(2)
    hooks = {msgspec.json.decode(h.body)["request_id"]: msgspec.json.decode(h.body) for h in receiver.hooks}
    assert {hooks[rid]["status"] for rid in (running, queued)} == {"ERROR"}
    gw.runner.gate.set()


async def test_failed_job(gw) -> None:
    rid = (await gw.submit("m", {"prompt": "x", "fail": 502})).json()["request_id"]
    assert bare(await gw.wait_done(rid)) == {"status": "COMPLETED", "error": "it failed"}
    err = assert_openai_error(await gw.client.get(f"/queue/requests/{rid}"), 502, "engine_error")
    assert err["message"] == "it failed" and err["type"] == "server_error"


@pytest.mark.parametrize("method,path", [("GET", "/queue/requests/nope/status"), ("GET", "/queue/requests/nope"),
                                         ("PUT", "/queue/requests/nope/cancel")])
async def test_unknown_request_is_404(gw, method, path) -> None:
    assert_openai_error(await gw.client.request(method, path), 404, "not_found")


@pytest.mark.parametrize("where", ["query", "body"])
async def test_webhook(gw, receiver, where) -> None:  # noqa: F811
    body = {"prompt": "p"}
    params = {}
    if where == "query":
        params["webhook"] = receiver.url
    else:
        body["callback_url"] = receiver.url
    rid = (await gw.submit("m", body, params=params)).json()["request_id"]
    await receiver.wait(1)
    hook = receiver.hooks[0]
    assert verify(SECRET, hook.body, hook.headers) and hook.headers["X-Request-Id"] == rid
    payload = (await gw.client.get(f"/queue/requests/{rid}")).json()
    assert msgspec.json.decode(hook.body) == {"request_id": rid, "status": "OK", "payload": payload, "error": None}


@pytest.mark.parametrize("hook", ["http://10.0.0.1/hook", "ftp://example.com/", "http://[::1]:99999/"])
async def test_webhook_refused(gw, hook) -> None:
    err = assert_openai_error(await gw.submit("m", {"prompt": "p"}, params={"webhook": hook}), 400)
    assert err["param"] == "webhook"
    err = assert_openai_error(await gw.submit("m", {"prompt": "p", "callback_url": hook}), 400)
    assert err["param"] == "callback_url"  # the client's field, where it sent the URL
    err = assert_openai_error(await gw.submit("m", {"prompt": "p", "callback_url": 5}), 400)
    assert err["param"] == "callback_url"


async def test_unique_ids(gw) -> None:
    ids = {(await gw.submit("m", {"prompt": "p"})).json()["request_id"] for _ in range(5)}
    assert len(ids) == 5 and all(uuid.UUID(i) for i in ids)


# --- jobs pay like requests ------------------------------------------------------------------------

async def test_job_records_its_key_and_anonymous_without_keys(gw) -> None:
    rid = (await gw.submit("m", {"prompt": "p"})).json()["request_id"]
    await gw.wait_done(rid)
    assert gw.runner.callers[rid] is ANONYMOUS or gw.runner.callers[rid] == ANONYMOUS
    secret, _ = await gw.limiter.keys.create("alice", rpm=100, concurrency=2)
    auth = {"Authorization": f"Bearer {secret}"}
    rid = (await gw.submit("m", {"prompt": "p"}, headers=auth)).json()["request_id"]
    await gw.wait_done(rid, headers=auth)
    assert gw.runner.callers[rid].name == "alice" and gw.runner.callers[rid].concurrency == 2


async def test_submission_pays_requests_per_minute(gw) -> None:
    secret, _ = await gw.limiter.keys.create("rpm2", rpm=2, concurrency=0)
    auth = {"Authorization": f"Bearer {secret}"}
    answers = [await gw.submit("m", {"prompt": str(i)}, headers=auth) for i in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    limited = answers[-1]
    assert_openai_error(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["retry-after"]) >= 1 and limited.headers["x-ratelimit-limit-requests"] == "2"
    for answer in answers[:2]:
        await gw.wait_done(answer.json()["request_id"], headers=auth)
    assert len(gw.runner.ran) == 2  # a refused submission stores nothing


async def test_a_refused_webhook_costs_the_key_no_request(gw) -> None:
    secret, _ = await gw.limiter.keys.create("rpm1", rpm=1, concurrency=0)
    auth = {"Authorization": f"Bearer {secret}"}
    for hook in ("http://10.0.0.1/hook", "ftp://example.com/"):
        assert_openai_error(await gw.submit("m", {"prompt": "p", "callback_url": hook}, headers=auth), 400)
    accepted = await gw.submit("m", {"prompt": "p"}, headers=auth)
    assert accepted.status_code == 200, accepted.text
    assert accepted.headers["x-ratelimit-limit-requests"] == "1"  # and the answer says what is left
    assert accepted.headers["x-ratelimit-remaining-requests"] == "0"
    await gw.wait_done(accepted.json()["request_id"], headers=auth)


async def test_a_key_sees_and_cancels_only_its_own_jobs(gw) -> None:
    alice, _ = await gw.limiter.keys.create("alice", rpm=0, concurrency=0)
    bob, _ = await gw.limiter.keys.create("bob", rpm=0, concurrency=0)
    as_alice, as_bob = ({"Authorization": f"Bearer {s}"} for s in (alice, bob))
    gw.runner.gate.clear()
    running = (await gw.submit("m", {"prompt": "1"}, headers=as_alice)).json()["request_id"]
    queued = (await gw.submit("m", {"prompt": "2"}, headers=as_alice)).json()["request_id"]
    for rid in (running, queued):
        for method, path in (("GET", f"/queue/requests/{rid}/status"), ("GET", f"/queue/requests/{rid}"),
                             ("PUT", f"/queue/requests/{rid}/cancel")):
            err = assert_openai_error(await gw.client.request(method, path, headers=as_bob), 404, "not_found")
            assert rid in err["message"]
    gw.runner.gate.set()
    for rid in (running, queued):  # bob's cancel did not reach alice's queued job
        await gw.wait_done(rid, headers=as_alice)
        assert (await gw.client.get(f"/queue/requests/{rid}", headers=as_alice)).status_code == 200
    assert_openai_error(await gw.client.get(f"/queue/requests/{queued}", headers=as_bob), 404)


async def test_submission_checks_the_model_allow_list(gw) -> None:
    secret, _ = await gw.limiter.keys.create("only-a", rpm=0, concurrency=0, models=["a"])
    auth = {"Authorization": f"Bearer {secret}"}
    assert (await gw.submit("a", {"prompt": "p"}, headers=auth)).status_code == 200
    assert_openai_error(await gw.submit("b", {"prompt": "p"}, headers=auth), 404, "model_not_found")
    assert_openai_error(await gw.submit("a", {"prompt": "p"}), 401)  # keys exist now: no key, no job
