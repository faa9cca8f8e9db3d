"""A client that goes away mid-stream aborts its request in the engine."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.e2e.conftest import EMBEDDED_FAMILY, REMOTE_FAMILIES, model_id

pytestmark = pytest.mark.engine

MAX_TOKENS = 3000


def metric(engine_url: str, name: str, labels: str = "") -> float:
    """Sum of a vLLM metric's samples whose labels contain ``labels`` (a regex over the label set)."""
    text = httpx.get(engine_url + "/metrics", timeout=10).text
    found = re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}} ([0-9.e+]+)$", text, re.M)
    return sum(float(value) for label_set, value in found if re.search(labels, label_set))


def finished(engine_url: str) -> float:
    """Requests the engine ran to their end (stop or length); an aborted one is not counted."""
    return metric(engine_url, "vllm:request_success_total", 'finished_reason="(?:stop|length)"')


def generated(engine_url: str) -> float:
    return metric(engine_url, "vllm:generation_tokens_total")


def wait_idle(engine_url: str, timeout_s: float = 120) -> None:
    """Until nothing runs and no token was generated for a second: the engine is done with the request,
    whichever way it ended. (vLLM's gauges are published per step, so one zero alone proves nothing.)"""
    deadline = time.monotonic() + timeout_s
    last = generated(engine_url)
    while True:
        time.sleep(1.0)
        now = generated(engine_url)
        if now == last and metric(engine_url, "vllm:num_requests_running") == 0:
            return
        assert time.monotonic() < deadline, "the engine kept generating"
        last = now


@pytest.mark.parametrize("family", [EMBEDDED_FAMILY, REMOTE_FAMILIES[0]], ids=["embedded", "remote"])
def test_disconnect_mid_stream_aborts_engine_request(gateway, family: str) -> None:
    engine = gateway.engines[family]
    wait_idle(engine)
    before_finished, before_tokens = finished(engine), generated(engine)
    body = {"model": model_id(family), "prompt": "Tell me a very long story.", "max_tokens": MAX_TOKENS,
            "stream": True, "ignore_eos": True}
    with httpx.Client(base_url=gateway.url, timeout=60) as client, \
            client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in got)  # the engine is generating
    # the client is gone: the engine drops the request instead of running it to its 3000th token
    wait_idle(engine)
    assert finished(engine) == before_finished  # dropped, not run to its end
    assert generated(engine) - before_tokens < MAX_TOKENS
