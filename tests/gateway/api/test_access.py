"""Every answer carries a request id (the client's own ``X-Request-Id`` when it is safe, else a new one), and
each request is one INFO line of ``vlm_gateway.access``: method, route, status, time, id and an error's code;
``log_level`` reaches the gateway's loggers once the app runs (Litestar does not reset the root logger)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from tests.gateway.responses_api.conftest import ScriptedEngine
from tests.helpers import TEST_KEYS, auth
from vlm_gateway.app import create_app
from vlm_gateway.limits import LimitSettings
from vlm_gateway.settings import ModelSettings, Settings

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def client(tiny_checkpoint) -> Iterator[TestClient]:
    s = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))], limits=LimitSettings(keys=TEST_KEYS))
    with TestClient(create_app(s, engine_factory=lambda model, session: ScriptedEngine())) as c:
        yield c


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vlm_gateway.access"]


def test_answers_carry_a_request_id_and_each_request_is_logged(client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vlm_gateway.access")
    ok = client.post("/v1/chat/completions", json=CHAT, headers={**auth(), "X-Request-Id": "client-rid-1"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "client-rid-1"  # the client's own, echoed
    made = [client.post("/v1/chat/completions", json=CHAT, headers=auth()).headers["x-request-id"] for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in made) and made[0] != made[1]
    unsafe = client.post("/v1/chat/completions", json=CHAT, headers={**auth(), "X-Request-Id": "a b\x7f" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])  # not echoed: a new one
    missing = client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=auth())
    refused = client.post("/v1/chat/completions", json=CHAT, headers=auth("vlm-not-a-key"))  # before the route
    nowhere = client.get("/v1/nowhere", headers=auth())  # no route matched
    assert [r.status_code for r in (missing, refused, nowhere)] == [404, 401, 404]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]) for r in (missing, refused, nowhere))

    logged = lines(caplog)
    assert len(logged) == 7, logged
    assert re.fullmatch(r"POST /v1/chat/completions 200 \d+\.\dms id=client-rid-1", logged[0]), logged[0]
    assert re.fullmatch(rf"POST /v1/chat/completions 404 \S+ id={missing.headers['x-request-id']} "
                        r"code=model_not_found", logged[4]), logged[4]
    assert logged[5].startswith("POST /v1/chat/completions 401 ") and logged[5].endswith(" code=invalid_api_key")
    assert logged[6].startswith("GET /v1/nowhere 404 ") and " code=" in logged[6]


def test_log_level_reaches_the_gateway_loggers(tiny_checkpoint) -> None:
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.DEBUG)  # what the CLI's logging set up does for log_level = "debug"
    try:
        s = Settings(log_level="debug", models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))])
        with TestClient(create_app(s, engine_factory=lambda model, session: ScriptedEngine())) as c:
            assert c.get("/health").status_code == 200
            assert logging.getLogger("vlm_gateway.images.fetch").getEffectiveLevel() == logging.DEBUG
            assert root.level == logging.DEBUG  # not reset by Litestar's own logging config
    finally:
        root.setLevel(before)
        logging.getLogger("vlm_gateway").setLevel(logging.NOTSET)
