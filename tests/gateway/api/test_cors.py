"""CORS: browser pages of the configured origins may call the API; others, and every page by default, not."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from tests.gateway.api.test_routes import ScriptedEngine, chat
from vlm_gateway.app import create_app
from vlm_gateway.limits.keys import hash_secret
from vlm_gateway.limits.settings import ConfigKey, LimitSettings
from vlm_gateway.settings import ModelSettings, Settings

PAGE = "https://app.example"
KEY = "vlm-cors-test-secret"


def app_client(tiny_checkpoint, origins: list[str]) -> TestClient:
    settings = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))], cors_origins=origins,
                        limits=LimitSettings(keys=[ConfigKey(name="web", hash=hash_secret(KEY))]))
    return TestClient(create_app(settings, engine_factory=lambda model, session: ScriptedEngine()))


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    with app_client(tiny_checkpoint, [PAGE]) as c:
        yield c


def test_a_preflight_from_an_allowed_page_needs_no_key(client) -> None:
    r = client.options("/v1/chat/completions", headers={
        "Origin": PAGE, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == PAGE
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os"} <= allowed
    assert "access-control-allow-credentials" not in r.headers  # keys travel in a header, not cookies


def test_the_answer_names_the_page_and_exposes_the_rate_limit_headers(client) -> None:
    r = client.post("/v1/chat/completions", json=chat(), headers={"Origin": PAGE, "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == PAGE
    exposed = r.headers["access-control-expose-headers"].lower()
    assert "x-ratelimit-remaining-requests" in exposed and "retry-after" in exposed
    missing_key = client.post("/v1/chat/completions", json=chat(), headers={"Origin": PAGE})
    assert missing_key.status_code == 401  # CORS lets the page read the answer, not skip the key
    assert missing_key.headers["access-control-allow-origin"] == PAGE


def test_other_pages_and_the_default_get_no_cors_headers(client, tiny_checkpoint) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/v1/chat/completions", json=chat(), headers={"Origin": "https://evil.example",
                                                                  "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    with app_client(tiny_checkpoint, []) as default:
        r = default.options("/v1/chat/completions", headers={**preflight, "Origin": PAGE})
        assert "access-control-allow-origin" not in r.headers
