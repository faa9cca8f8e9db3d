"""/metrics of the gateway process serving real engines: parsed with Prometheus' text parser, its token
counters move by exactly the usage the response reported (one request at a time in this test)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import EMBEDDED_FAMILY, REMOTE_FAMILIES, model_id
from tests.helpers import png_data_uri

pytestmark = pytest.mark.engine


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.mark.parametrize("family", [EMBEDDED_FAMILY, REMOTE_FAMILIES[0]], ids=["embedded", "remote"])
def test_token_counters_match_the_reported_usage(gateway, family: str) -> None:
    model = model_id(family)
    before = scrape(gateway.url)
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe it."}, {"type": "image_url", "image_url": {"url": png_data_uri(96, 64)}}]}]}
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    after = scrape(gateway.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("vlm_gateway_prompt_tokens_total", model=model) == usage["prompt_tokens"]
    assert moved("vlm_gateway_completion_tokens_total", model=model) == usage["completion_tokens"]
    assert moved("vlm_gateway_image_tokens_total", model=model) == usage["prompt_tokens_details"]["image_tokens"]
    assert moved("vlm_gateway_model_requests_total", model=model, outcome="ok") == 1
    assert moved("vlm_gateway_time_to_first_token_seconds_count", model=model) == 0  # (a whole answer's: its end)
    assert moved("vlm_gateway_requests_total", path="/v1/chat/completions", status_code="200") == 1
    assert value(after, "vlm_gateway_engine_ready", model=model) == 1
