"""A client that closes its connection before the answer's first byte (a whole answer, or a stream whose
first output has not come) stops its engine request and frees its key's slot at once, on uvicorn; the access
log says 499."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.gateway.responses_api.conftest import ScriptedEngine, app_for, wait_for
from tests.helpers import TEST_KEYS, auth, hash_secret, serve_app
from vlm_gateway.limits import ConfigKey, LimitSettings
from vlm_gateway.settings import ModelSettings, Settings

SOLO = "vlm-test-solo-secret"  # a key with one concurrent request


@pytest.fixture(scope="module")
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture(scope="module")
def base_url(tiny_checkpoint, engine):
    keys = [*TEST_KEYS, ConfigKey(name="solo", hash=hash_secret(SOLO), rpm=0, concurrency=1)]
    s = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))], limits=LimitSettings(keys=keys))
    with serve_app(app_for(s, engine), start_timeout_s=60) as url:
        yield url


@pytest.mark.parametrize("route,body", [
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ("/completions", {"prompt": "Hello"}),
    ("/completions", {"prompt": "Hello", "stream": True}),
])
def test_a_client_that_leaves_before_the_answer_stops_its_engine_request(base_url, engine, route, body,
                                                                          caplog) -> None:
    caplog.set_level(logging.INFO, logger="vlm_gateway.access")
    engine.reset()
    engine.gate.clear()  # the engine holds every answer
    try:
        for sent in (1, 2):
            with pytest.raises(httpx.ReadTimeout):  # the second: not a 429, so the first one's slot was freed
                httpx.post(base_url + route, json={"model": "m", "max_tokens": 4, **body}, headers=auth(SOLO),
                           timeout=httpx.Timeout(5, read=0.5))
            wait_for(lambda sent=sent: engine.aborted == sent)  # the engine request was stopped
            wait_for(lambda sent=sent: sum(r.getMessage().startswith(f"POST /v1{route} 499 ") and
                                           r.getMessage().endswith(" code=client_closed_request")
                                           for r in caplog.records if r.name == "vlm_gateway.access") == sent)
    finally:
        engine.gate.set()
    ok = httpx.post(base_url + route, json={"model": "m", "max_tokens": 4, **body}, headers=auth(SOLO), timeout=10)
    assert ok.status_code == 200, ok.text


def test_a_client_that_stops_reading_a_stream_is_let_go(base_url, engine, monkeypatch) -> None:
    """A stream whose client takes nothing more (its connection open, its window shut) is stopped after
    ``SEND_STALL_S``: the engine request ends and the key's slot is free, where before they stayed held
    as long as the client kept the connection."""
    import socket
    from urllib.parse import urlsplit

    from vlm_gateway import streaming

    monkeypatch.setattr(streaming, "SEND_STALL_S", 0.5)
    engine.reset()
    engine.pieces = ["x" * 16384] * 1000  # 16 MB: more than the sockets' buffers hold
    url = urlsplit(base_url)
    body = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    head = (f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {SOLO}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.socket() as reader:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect((url.hostname, url.port))
        reader.sendall(head + body)  # and reads nothing
        wait_for(lambda: engine.aborted == 1)
        engine.reset()
        ok = httpx.post(base_url + "/chat/completions", json={"model": "m", "messages": [{"role": "user",
                        "content": "hi"}]}, headers=auth(SOLO), timeout=10)
        assert ok.status_code == 200, ok.text  # (concurrency 1: the stalled stream's slot was given back)
