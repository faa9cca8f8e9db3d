"""Two gateway replicas sharing one Redis and the same engines: keys, limits and jobs across replicas,
and what survives a replica killed with SIGKILL.

The replicas reach the session's vLLM engines as remote engines (no engines of their own), so this
adds only two small processes. Every Redis key of this run lives under a unique prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import subprocess
import threading
import time
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from aiohttp import web

from tests.e2e.conftest import EMBEDDED_FAMILY, REMOTE_FAMILIES, model_id
from tests.gateway.state.fixtures import REDIS_URL
from tests.helpers import PYTHON, Child, free_port, png_bytes
from tests.slot_monitor import SlotMonitor

pytestmark = pytest.mark.engine

SECRET = "test-webhook-secret"
MODEL = model_id(REMOTE_FAMILIES[0])
LEASE_TTL_S = 20  # renewed every 1 s; longer than the whole-process stalls a loaded 2-core box has shown (6.6 s)


class Replica:
    def __init__(self, name: str, config: Path, logs: Path) -> None:
        self.name, self.config, self.logs = name, config, logs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Child | None = None

    def start(self) -> None:
        self.child = Child(f"{self.name}-{time.monotonic_ns()}", [
            PYTHON, "-m", "vlm_gateway.cli", "serve", "--config", str(self.config), "--port", str(self.port)],
            self.logs)
        self.child.wait_http(self.url + "/health", 120, ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])

    def kill9(self) -> None:
        assert self.child is not None
        self.child.stop(sig=signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster_config(gateway, logs: Path, checkpoints) -> Path:
    prefix = f"vlmtest-{uuid.uuid4().hex[:8]}"
    lines = ['redis_url = "redis://127.0.0.1:6379/0"', "",
             "[limits]", f'redis_prefix = "{prefix}:limits:"', f"lease_ttl_s = {LEASE_TTL_S}", "renew_interval_s = 1",
             "trace_slots = true",
             "request_timeout_s = 120", "",
             "[jobs]", f'key_prefix = "{prefix}:{{jobs}}:"', "visibility_timeout_s = 3", "heartbeat_s = 0.5",
             "reclaim_interval_s = 0.5", "poll_s = 0.5", "max_attempts = 10", "concurrency = 4", "",
             "[jobs.webhook]", f'secret = "{SECRET}"', "allow_loopback = true", "base_delay_s = 0.2",
             "max_delay_s = 1", "attempts = 8", "", "[images]", "allow_loopback = true", "fetch_timeout_s = 120", ""]
    for family in [EMBEDDED_FAMILY, *REMOTE_FAMILIES]:
        lines += ["[[models]]", f'id = "{model_id(family)}"', f'checkpoint = "{checkpoints[family]}"',
                  "context_length = 4096", f'engine = {{ kind = "remote", urls = ["{gateway.engines[family]}"] }}', ""]
    path = logs / "cluster.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def replicas(cluster_config: Path, logs: Path):
    pair = [Replica("replica-a", cluster_config, logs), Replica("replica-b", cluster_config, logs)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(Replica.start, pair))
    yield pair
    for replica in pair:
        if replica.child is not None:
            replica.child.stop()


def create_key(config: Path, *args: str) -> str:
    out = subprocess.run([PYTHON, "-m", "vlm_gateway.cli", "keys", "create", "--config", str(config), *args],
                         capture_output=True, text=True, check=True).stdout
    return re.search(r"(vlm-[A-Za-z0-9_-]{20,})", out).group(1)


def key_id(config: Path, name: str) -> str:
    listed = subprocess.run([PYTHON, "-m", "vlm_gateway.cli", "keys", "list", "--config", str(config)],
                            capture_output=True, text=True, check=True).stdout
    return next(line.split()[0] for line in listed.splitlines() if line.split()[1:2] == [name])


def limits_prefix(config: Path) -> str:
    return tomllib.loads(config.read_text())["limits"]["redis_prefix"]


def chat(max_tokens: int = 1, **extra) -> dict:
    return {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hi"}], **extra}


def test_rpm_limit_holds_across_replicas(replicas, cluster_config: Path) -> None:
    key = create_key(cluster_config, "--name", "rpm30", "--rpm", "30", "--concurrency", "0")
    headers = {"Authorization": f"Bearer {key}"}

    def send(i: int) -> httpx.Response:
        return httpx.post(replicas[i % 2].url + "/v1/chat/completions", json=chat(), headers=headers, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(40)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 30 and codes.count(429) == 10, codes
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["x-ratelimit-limit-requests"] == "30"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "30"


def test_no_key_or_wrong_key_is_401_but_health_is_open(replicas) -> None:
    r = httpx.post(replicas[0].url + "/v1/chat/completions", json=chat())
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(replicas[1].url + "/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert httpx.get(replicas[1].url + "/health").status_code == 200


def test_concurrency_limit_holds_across_replicas(replicas, cluster_config: Path) -> None:
    key = create_key(cluster_config, "--name", "conc2", "--rpm", "0", "--concurrency", "2")
    headers = {"Authorization": f"Bearer {key}"}
    slow = chat(max_tokens=400, ignore_eos=True)

    def send(i: int) -> int:
        return httpx.post(replicas[i % 2].url + "/v1/chat/completions", json=slow, headers=headers,
                          timeout=120).status_code

    monitor = SlotMonitor(f"{limits_prefix(cluster_config)}conc:{key_id(cluster_config, 'conc2')}", REDIS_URL)
    monitor.start()
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(send, range(6)))
    monitor.finish()
    # The invariant, not a timing guess: never more than 2 at once (a request that arrives after
    # another finished may be admitted, so the number of 200s is not fixed).
    assert set(codes) <= {200, 429} and codes.count(200) >= 2 and codes.count(429) >= 1, codes
    assert monitor.samples > 10 and monitor.max_seen <= 2, monitor.max_seen
    assert monitor.live() == set()


def test_slot_of_a_killed_replica_comes_back_after_its_lease(replicas, cluster_config: Path,
                                                              held_image: HeldImage) -> None:
    a, b = replicas
    key = create_key(cluster_config, "--name", "conc1", "--rpm", "0", "--concurrency", "1")
    headers = {"Authorization": f"Bearer {key}"}

    def a_answers() -> int:
        return httpx.post(a.url + "/v1/chat/completions", json=chat(), headers=headers, timeout=60).status_code

    def held_on_b() -> None:  # holds the key's only slot while its image is being fetched; B dies meanwhile
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(b.url + "/v1/chat/completions", headers=headers, timeout=120,
                       json={**chat(), "messages": image_message(held_image.url)})

    holder = threading.Thread(target=held_on_b, daemon=True)
    try:
        holder.start()
        # Images are loaded after admission: a fetch that arrived proves B holds the slot. (A stream is
        # no proof: a tiny model may finish thousands of tokens while this test stands still.)
        assert held_image.fetching.wait(60)
        assert a_answers() == 429  # B's request holds the key's only slot, seen from A
        b.kill9()  # dies holding it
        killed_at = time.monotonic()
        assert a_answers() == 429  # nobody released it: it is held until the lease runs out
        while time.monotonic() - killed_at < LEASE_TTL_S + 10 and (code := a_answers()) != 200:
            time.sleep(0.5)
        assert code == 200  # ... and then it came back, without anyone releasing it
    finally:
        if b.child is None or b.child.proc.poll() is not None:
            b.start()
        holder.join(10)


def test_openai_sdk_retries_a_429_then_succeeds_and_revoked_key_is_rejected(replicas, cluster_config: Path,
                                                                            held_image: HeldImage) -> None:
    a, b = replicas
    key = create_key(cluster_config, "--name", "sdk", "--rpm", "0", "--concurrency", "1")
    headers = {"Authorization": f"Bearer {key}"}

    statuses: list[int] = []
    saw_429 = threading.Event()

    def seen(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        if response.status_code == 429:
            saw_429.set()

    client = openai.OpenAI(base_url=a.url + "/v1", api_key=key, max_retries=8,
                           http_client=httpx.Client(event_hooks={"response": [seen]}))
    # A request on B holds the key's only slot while its image is being fetched: the image server
    # answers only once the SDK has met a 429. Then B's request finishes, its slot is freed and the
    # SDK's own retry must get through. Driven by events, not timing.
    held = threading.Thread(target=lambda: httpx.post(b.url + "/v1/chat/completions", headers=headers, timeout=120,
                                                      json=chat(messages=image_message(held_image.url))))
    held.start()
    assert held_image.fetching.wait(60), "B never started fetching the image"  # admitted: the slot is held
    dropper = threading.Thread(target=lambda: (saw_429.wait(120), held_image.release.set()))
    dropper.start()
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    dropper.join()
    held.join()
    assert reply.choices[0].message.content is not None
    assert statuses[0] == 429 and statuses[-1] == 200, statuses  # a 429, then the SDK's retry succeeded
    subprocess.run([PYTHON, "-m", "vlm_gateway.cli", "keys", "revoke", key_id(cluster_config, "sdk"),
                    "--config", str(cluster_config)],
                   check=True, capture_output=True)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=b.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)


class HeldImage:
    """An image server whose answer waits until ``release`` is set; ``fetching`` says a fetch arrived."""

    def __init__(self) -> None:
        self.fetching, self.release = threading.Event(), threading.Event()
        self.url = ""


def image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "Hi"}]}]


@pytest.fixture
def held_image():
    held, state = HeldImage(), {}

    async def image(request: web.Request) -> web.Response:
        held.fetching.set()
        while not held.release.is_set():
            await asyncio.sleep(0.05)
        return web.Response(body=png_bytes(), content_type="image/png")

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/held.png", image)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        state["loop"], state["port"] = loop, site._server.sockets[0].getsockname()[1]
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    while "port" not in state:
        time.sleep(0.05)
    held.url = f"http://127.0.0.1:{state['port']}/held.png"
    yield held
    held.release.set()
    state["loop"].call_soon_threadsafe(state["loop"].stop)


@pytest.fixture(scope="module")
def webhook_receiver():
    received: list[tuple[dict, bool]] = []
    state: dict = {}
    webhooks = openai.OpenAI(api_key="unused", webhook_secret=SECRET).webhooks

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:  # as a receiver would check it: OpenAI's SDK, Standard Webhooks signatures
            webhooks.unwrap(body, dict(request.headers))
            ok = True
        except openai.InvalidWebhookSignatureError:
            ok = False
        received.append((json.loads(body), ok))
        if random.random() < 0.2:  # a flaky receiver: the gateway must retry
            return web.Response(status=503)
        return web.Response()

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        state["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        state["loop"] = loop
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    while "port" not in state:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{state['port']}/hook", received
    state["loop"].call_soon_threadsafe(state["loop"].stop)


def test_100_jobs_survive_a_replica_killed_and_restarted(replicas, cluster_config: Path, webhook_receiver) -> None:
    a, b = replicas
    hook_url, received = webhook_receiver
    key = create_key(cluster_config, "--name", "jobs", "--rpm", "0", "--concurrency", "0")
    headers = {"Authorization": f"Bearer {key}"}
    rng = random.Random(7)
    ids: list[str] = []
    kills = sorted(rng.sample(range(5, 95), 3))
    for i in range(100):
        if kills and i == kills[0]:
            kills.pop(0)
            b.kill9()
            b.start()
        r = httpx.post(f"{a.url}/queue/{MODEL}", params={"webhook": hook_url}, headers=headers, timeout=30,
                       json={"messages": [{"role": "user", "content": f"job {i}"}], "max_tokens": 4})
        assert r.status_code == 200, r.text
        ids.append(r.json()["request_id"])
    b.kill9()  # once more while jobs are running, then back
    time.sleep(1)
    b.start()
    deadline = time.monotonic() + 300
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            status = httpx.get(f"{a.url}/queue/requests/{job_id}/status", headers=headers, timeout=30).json()
            if status["status"] == "COMPLETED":
                pending.discard(job_id)
        time.sleep(0.5)
    assert not pending, f"{len(pending)} jobs never completed"
    for job_id in ids:
        result = httpx.get(f"{b.url}/queue/requests/{job_id}", headers=headers, timeout=30)
        assert result.status_code == 200 and result.json()["object"] == "chat.completion"
    while time.monotonic() < deadline and {p["request_id"] for p, _ in received if p["status"] == "OK"} != set(ids):
        time.sleep(0.5)
    delivered = {p["request_id"] for p, _ in received if p["status"] == "OK"}
    assert delivered == set(ids)
    assert all(ok for _, ok in received)  # every delivery carried a valid signature
    assert all(p["payload"]["object"] == "chat.completion" for p, _ in received)


def test_previous_response_id_across_replicas(replicas, cluster_config: Path) -> None:
    a, b = replicas
    key = create_key(cluster_config, "--name", "responses", "--rpm", "0", "--concurrency", "0")
    on_a = openai.OpenAI(base_url=a.url + "/v1", api_key=key, max_retries=0, timeout=120)
    on_b = openai.OpenAI(base_url=b.url + "/v1", api_key=key, max_retries=0, timeout=120)
    first = on_a.responses.create(model=MODEL, input="Remember the word apple.", max_output_tokens=3, temperature=0)
    assert on_b.responses.retrieve(first.id).output_text == first.output_text  # stored in the shared Redis
    second = on_b.responses.create(model=MODEL, previous_response_id=first.id, input="Which word?",
                                   max_output_tokens=3, temperature=0)
    alone = on_b.responses.create(model=MODEL, input="Which word?", max_output_tokens=3, temperature=0)
    assert second.usage.input_tokens > alone.usage.input_tokens  # B's prompt held A's turn
    other = openai.OpenAI(base_url=b.url + "/v1", max_retries=0, timeout=60,
                          api_key=create_key(cluster_config, "--name", "stranger", "--rpm", "0", "--concurrency", "0"))
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)  # another key's response is not there
