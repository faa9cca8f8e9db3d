"""A client that goes away mid-stream aborts its request in the engine."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.e2e.conftest import EMBEDDED_FAMILY, REMOTE_FAMILIES, model_id

pytestmark = pytest.mark.engine


def finished(engine_url: str) -> float:
    """Requests the engine ran to their end (stop or length); an aborted one is not counted."""
    text = httpx.get(engine_url + "/metrics", timeout=10).text
    found = re.findall(r'^vllm:request_success_total\{[^}]*finished_reason="(?:stop|length)"[^}]*\} ([0-9.e+]+)$',
                       text, re.M)
    return sum(float(v) for v in found)


def running(engine_url: str) -> float:
    text = httpx.get(engine_url + "/metrics", timeout=10).text
    m = re.search(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("family", [EMBEDDED_FAMILY, REMOTE_FAMILIES[0]], ids=["embedded", "remote"])
def test_disconnect_mid_stream_aborts_engine_request(gateway, family: str) -> None:
    engine = gateway.engines[family]
    before = finished(engine)
    body = {"model": model_id(family), "prompt": "Tell me a very long story.", "max_tokens": 3000,
            "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=gateway.url, timeout=60) as client, \
            client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in got)
        seen = time.monotonic() + 30  # vLLM publishes its running gauge now and then, not at once
        while running(engine) < 1:
            assert time.monotonic() < seen, "the engine never reported the request running"
            next(lines)
            time.sleep(0.1)
    # the client is gone: the engine drops the request (3000 tokens would take far longer than this)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and running(engine) > 0:
        time.sleep(0.2)
    assert running(engine) == 0
    assert finished(engine) == before  # dropped, not run to its end
