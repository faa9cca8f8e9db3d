"""The seed services' routes under API keys: the answers carry the key's ``x-ratelimit-*`` headers, as
/v1/chat/completions' do, and a vlm.run batch job is its key's alone."""

from __future__ import annotations

import hashlib
import time

import pytest
from litestar.testing import TestClient

from tests.gateway.api.test_routes import ScriptedEngine
from tests.helpers import png_data_uri
from vlm_gateway.app import create_app
from vlm_gateway.limits.settings import ConfigKey, LimitSettings
from vlm_gateway.settings import ModelSettings, Settings

ALICE, BOB = "sk-alice-secret", "sk-bob-secret"


def key(name: str, secret: str) -> ConfigKey:
    return ConfigKey(name=name, hash=hashlib.sha256(secret.encode()).hexdigest(), rpm=100, concurrency=0)


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    settings = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))],
                        limits=LimitSettings(keys=[key("alice", ALICE), key("bob", BOB)]))
    with TestClient(create_app(settings, engine_factory=lambda model, session: ScriptedEngine())) as c:
        yield c


@pytest.mark.parametrize("route,body", [
    ("/vision", {"image_url": png_data_uri(), "prompt": "What?", "model": "m"}),
    ("/run/m", {"image_url": png_data_uri(), "prompt": "What?"}),
    ("/v1/image/generate", {"images": [png_data_uri()], "domain": "image.caption", "model": "m"}),
    ("/v1/image/generate", {"images": [png_data_uri()], "domain": "image.caption", "model": "m", "batch": True}),
    ("/queue/m", {"image_url": png_data_uri(), "prompt": "What?"}),
])
def test_seed_answers_carry_the_keys_rate_limit_headers(client, route, body) -> None:
    r = client.post(route, json=body, headers=auth(ALICE))
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-requests"] == "100"
    assert int(r.headers["x-ratelimit-remaining-requests"]) < 100


def test_a_vlmrun_batch_job_is_its_keys_alone(client) -> None:
    body = {"images": [png_data_uri()], "domain": "image.caption", "model": "m", "batch": True}
    job = client.post("/v1/image/generate", json=body, headers=auth(ALICE)).json()["id"]
    for _ in range(100):
        status = client.get(f"/v1/image/generate/{job}", headers=auth(ALICE)).json()
        if status["status"] == "completed":
            break
        time.sleep(0.05)
    assert status["status"] == "completed" and status["response"] == "Hi there"
    other = client.get(f"/v1/image/generate/{job}", headers=auth(BOB))
    assert other.status_code == 404 and other.json()["error"]["param"] == "request_id"
