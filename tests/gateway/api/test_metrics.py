"""GET /metrics: Prometheus' text format, parsed with prometheus-client's own parser; the counters move by
exactly what the requests did (the real app with a scripted engine, two keys, one limited to 1 request a
minute)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.responses_api.conftest import ScriptedEngine
from tests.helpers import ALICE, TEST_KEYS, auth, png_data_uri
from vlm_gateway.app import create_app
from vlm_gateway.limits import ConfigKey, LimitSettings
from vlm_gateway.limits.keys import hash_secret
from vlm_gateway.settings import ModelSettings, Settings

CAROL = "vlm-test-carol-secret"  # one request a minute


@pytest.fixture(scope="module")
def client(tiny_checkpoint) -> Iterator[TestClient]:
    keys = [*TEST_KEYS, ConfigKey(name="carol", hash=hash_secret(CAROL), rpm=1, concurrency=0)]
    s = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))], limits=LimitSettings(keys=keys))
    with TestClient(create_app(s, engine_factory=lambda model, session: ScriptedEngine())) as c:
        yield c


def scrape(client: TestClient) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, through prometheus-client's text parser (no API key needed)."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def chat(client: TestClient, secret: str = ALICE, model: str = "m", images: int = 1, **extra):
    content = [{"type": "text", "text": "What is it?"}] + [
        {"type": "image_url", "image_url": {"url": png_data_uri(64, 48, (10 * i, 20, 30))}} for i in range(images)]
    return client.post("/v1/chat/completions", headers=auth(secret), json={
        "model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 5, **extra})


def test_metrics_count_what_requests_did(client) -> None:
    before = scrape(client)
    assert chat(client).status_code == 200
    assert chat(client, model="nope").status_code == 404
    assert chat(client, secret=CAROL, stream=True, stream_options={"include_usage": True}).status_code == 200
    assert chat(client, secret=CAROL).status_code == 429
    refused = chat(client, secret="vlm-not-a-key")  # refused before the route runs
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/chat/completions"
    assert moved("vlm_gateway_requests_total", path=route, status_code="200") == 2
    assert moved("vlm_gateway_requests_total", path=route, status_code="404") == 1
    assert moved("vlm_gateway_requests_total", path=route, status_code="429") == 1
    assert moved("vlm_gateway_requests_total", path=route, status_code="401") == 1
    assert moved("vlm_gateway_request_duration_seconds_count", path=route) == 5
    assert moved("vlm_gateway_requests_error_total", path=route) == 0
    assert value(after, "vlm_gateway_requests_in_progress", path=route) == 0
    assert moved("vlm_gateway_requests_total", path="/metrics") == 0  # scrapes are not counted
    assert moved("vlm_gateway_model_requests_total", model="m", outcome="ok") == 2
    assert moved("vlm_gateway_images_total", model="m") == 2
    # the scripted engine reports prompt ids + 99 per image and 2 completion tokens
    assert moved("vlm_gateway_completion_tokens_total", model="m") == 4
    assert moved("vlm_gateway_image_tokens_total", model="m") > 2 * 98
    assert moved("vlm_gateway_prompt_tokens_total", model="m") > moved("vlm_gateway_image_tokens_total", model="m")
    assert moved("vlm_gateway_time_to_first_token_seconds_count", model="m") == 1  # the streamed one's
    assert moved("vlm_gateway_before_engine_seconds_count", model="m") == 2
    assert moved("vlm_gateway_image_loader_events_total", event="data_uris") == 2
    assert moved("vlm_gateway_rate_limited_total", key="carol") == 1
    assert value(after, "vlm_gateway_engine_ready", model="m") == 1
    assert value(after, "vlm_gateway_engine_in_flight", model="m") == 0  # nothing left running
    assert ("vlm_gateway_jobs_unfinished", frozenset()) in after
    assert not any("secret" in str(labels) for _, labels in after)


def test_jobs_backlog_is_read_when_scraped(client) -> None:
    r = client.post("/queue/m", headers=auth(ALICE), json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200
    samples = scrape(client)
    assert value(samples, "vlm_gateway_jobs_unfinished") >= 0
    assert value(samples, "vlm_gateway_jobs_oldest_age_seconds") >= 0


def test_metrics_route_is_public_and_not_in_the_api_document(client) -> None:
    assert client.get("/metrics").status_code == 200  # no key
    assert client.get("/v1/models").status_code == 401
    assert "/metrics" not in client.get("/schema/openapi.json").json()["paths"]
