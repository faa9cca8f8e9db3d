"""Fixtures for the Batch API tests: the real app (tokenizer, templates, image loader, file store, job
queue) with a scripted engine in place of vLLM and two API keys, on the memory backends and on the
real Redis (skipped when none answers, failed under ``CI``; every key under a per-module prefix is
deleted afterwards)."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from litestar.testing import TestClient

from tests.gateway.responses_api.conftest import ScriptedEngine
from tests.helpers import ALICE, TEST_KEYS, TEST_REDIS_URL, auth, require_redis, serve_app
from vlm_gateway.app import create_app
from vlm_gateway.batches.settings import BatchSettings
from vlm_gateway.files import FileSettings
from vlm_gateway.jobs.settings import JobSettings, WebhookSettings
from vlm_gateway.limits import LimitSettings
from vlm_gateway.settings import ModelSettings, Settings

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"batch-webhook-test-key-32-bytes!").decode()


class Receiver:
    """A webhook receiver on loopback (a thread): every POST's headers and body, answered 200."""

    def __init__(self) -> None:
        self.hooks: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with received.arrived:
                    received.hooks.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    received.arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, batch_id: str, timeout_s: float = 10.0) -> list:
        """The batch's events as OpenAI's SDK reads them (``webhooks.unwrap`` checks each signature), once
        at least one has arrived."""
        client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9", webhook_secret=WEBHOOK_SECRET)
        with self.arrived:
            self.arrived.wait_for(lambda: any(batch_id.encode() in body for _, body in self.hooks), timeout_s)
            hooks = list(self.hooks)
        events = [client.webhooks.unwrap(body, headers) for headers, body in hooks]
        return [event for event in events if event.data.id == batch_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


def settings(checkpoint, files_dir: str, backend: str, prefix: str, webhook_url: str = "") -> Settings:
    hooks = WebhookSettings(secret=WEBHOOK_SECRET, allow_loopback=True, attempts=3, base_delay_s=0.05)
    base = dict(models=[ModelSettings(id="m", checkpoint=str(checkpoint), aliases=["alias"])],
                limits=LimitSettings(keys=TEST_KEYS, redis_prefix=prefix),
                jobs=JobSettings(concurrency=1, poll_s=0.05, key_prefix=f"{prefix}{{jobs}}:", webhook=hooks),
                files=FileSettings(dir=files_dir, key_prefix=f"{prefix}{{files}}:"),
                batches=BatchSettings(key_prefix=f"{prefix}{{batches}}:", webhook_url=webhook_url))
    if backend == "redis":
        base["redis_url"] = TEST_REDIS_URL
    return Settings(**base)


@pytest.fixture(scope="module")
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture(autouse=True)
def fresh_engine(engine) -> Iterator[None]:
    engine.reset()
    yield
    engine.gate.set()


@pytest.fixture(scope="module", params=["memory", "redis"])
def client(request, tiny_checkpoint, engine, tmp_path_factory, receiver) -> Iterator[TestClient]:
    prefix = f"test:batches:{uuid.uuid4().hex[:12]}:"
    redis = require_redis() if request.param == "redis" else None
    s = settings(tiny_checkpoint, str(tmp_path_factory.mktemp("files")), request.param, prefix, receiver.url)
    try:
        with TestClient(create_app(s, engine_factory=lambda model, session: engine)) as c:
            c.headers.update(auth(ALICE))
            yield c
    finally:
        if redis is not None:
            keys = list(redis.scan_iter(match=prefix + "*"))
            if keys:
                redis.delete(*keys)
            redis.close()


@pytest.fixture(scope="module")
def sdk_url(tiny_checkpoint, engine, tmp_path_factory) -> Iterator[str]:
    """The app (memory backends) on uvicorn in a thread, for the OpenAI SDK: its /v1 base URL."""
    s = settings(tiny_checkpoint, str(tmp_path_factory.mktemp("files")), "memory", "unused:")
    with serve_app(create_app(s, engine_factory=lambda model, session: engine), start_timeout_s=60) as url:
        yield url


# --- helpers ---------------------------------------------------------------------------------------

def chat_line(custom_id: str, text: str = "Hi?", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": text}], **body}}


def jsonl(lines: list) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def upload(client: TestClient, lines: list, secret: str = ALICE, purpose: str = "batch") -> str:
    r = client.post("/v1/files", files={"file": ("in.jsonl", jsonl(lines), "application/jsonl")},
                    data={"purpose": purpose}, headers=auth(secret))
    assert r.status_code == 200, r.text
    return r.json()["id"]


def create(client: TestClient, file_id: str, endpoint: str = "/v1/chat/completions", secret: str = ALICE,
           **extra):
    return client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": endpoint,
                                            "completion_window": "24h", **extra}, headers=auth(secret))


def wait_status(client: TestClient, batch_id: str, statuses: tuple[str, ...], secret: str = ALICE,
                timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.get(f"/v1/batches/{batch_id}", headers=auth(secret)).json()
        if batch["status"] in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch['status']}: {batch}"
        time.sleep(0.02)


def content(client: TestClient, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    r = client.get(f"/v1/files/{file_id}/content")
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.content.splitlines() if line.strip()]
