"""Tokens per minute through the app: a prompt is counted before it goes to the engine, so one that does
not fit in the key's minute is a 429 naming what it asked, and the engine never sees it."""

from __future__ import annotations

import hashlib

from litestar.testing import TestClient

from tests.gateway.api.test_routes import ScriptedEngine
from vlm_gateway.app import create_app
from vlm_gateway.limits.settings import ConfigKey, LimitSettings
from vlm_gateway.settings import ModelSettings, Settings

SECRET = "sk-tpm-secret"


def test_a_prompt_is_counted_before_it_reaches_the_engine(tiny_checkpoint) -> None:
    key = ConfigKey(name="small", hash=hashlib.sha256(SECRET.encode()).hexdigest(), rpm=0, concurrency=0, tpm=100)
    settings = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))],
                        limits=LimitSettings(keys=[key]))
    engine = ScriptedEngine()
    auth = {"Authorization": f"Bearer {SECRET}"}
    long = {"model": "m", "messages": [{"role": "user", "content": "word " * 120}], "max_tokens": 2}
    with TestClient(create_app(settings, engine_factory=lambda model, session: engine)) as client:
        r = client.post("/v1/chat/completions", json=long, headers=auth)
        assert r.status_code == 429, r.text
        error = r.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and "Request too large" in error["message"], error
        assert r.headers["x-ratelimit-remaining-tokens"] == "100" and engine.requests == []
        short = client.post("/v1/chat/completions", json={**long, "messages": [{"role": "user", "content": "hi"}]},
                            headers=auth)
        assert short.status_code == 200, short.text
        prompt = short.json()["usage"]["prompt_tokens"]
        assert short.headers["x-ratelimit-remaining-tokens"] == str(100 - prompt)  # counted as it was sent
