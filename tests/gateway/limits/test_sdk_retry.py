"""The OpenAI SDK against a route that uses the Limiter: its built-in retry honours our 429's
``retry-after-ms`` and then succeeds; without retries it sees OpenAI's error shape."""

from __future__ import annotations

import time
from typing import Any

import httpx2
import openai
import pytest
from litestar import Litestar, Request, Response, post

from tests.gateway.limits.support import make_limiter
from vlm_gateway.errors import error_response
from vlm_gateway.limits import Limiter
from vlm_gateway.state import MemoryState


def _app(limiter: Limiter, seen: list[int]) -> Litestar:
    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
        caller = await limiter.authenticate(request.headers.get("authorization"))
        body = await request.json()
        try:
            permit = await limiter.admit(caller, (body["model"],))
        except Exception:
            seen.append(429)
            raise
        try:
            seen.append(200)
            return Response({"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "hi"}}]},
                            headers=permit.headers)
        finally:
            await permit.release(tokens=3)

    return Litestar([chat], exception_handlers={Exception: error_response})


async def _client(limiter: Limiter, seen: list[int], secret: str, retries: int) -> openai.AsyncOpenAI:
    transport = httpx2.ASGITransport(app=_app(limiter, seen))
    return openai.AsyncOpenAI(api_key=secret, base_url="http://gateway/v1", max_retries=retries,
                              http_client=httpx2.AsyncClient(transport=transport, base_url="http://gateway/v1"))


async def test_sdk_retry_succeeds_after_429() -> None:
    limiter = make_limiter(MemoryState(), window_s=1.2)
    secret, _ = await limiter.keys.create("acme", rpm=2)
    seen: list[int] = []
    client = await _client(limiter, seen, secret, retries=2)
    messages = [{"role": "user", "content": "hello"}]
    for _ in range(2):
        await client.chat.completions.create(model="m", messages=messages)
    start = time.monotonic()
    raw = await client.chat.completions.with_raw_response.create(model="m", messages=messages)
    waited = time.monotonic() - start
    assert raw.parse().choices[0].message.content == "hi"
    # One 429, then the first retry got through: the SDK waited as long as retry-after-ms said (until
    # the window had room), not its own backoff (<= 0.5 s before the first retry), which would have met
    # a second 429. Only a lower bound on time: waiting longer is always allowed.
    assert seen == [200, 200, 429, 200]
    assert waited > 0.6
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    await client.close()


async def test_sdk_sees_openai_errors() -> None:
    limiter = make_limiter(MemoryState())
    secret, _ = await limiter.keys.create("acme", rpm=1, models=["m"])
    seen: list[int] = []
    client = await _client(limiter, seen, secret, retries=0)
    messages = [{"role": "user", "content": "hello"}]
    await client.chat.completions.create(model="m", messages=messages)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="m", messages=messages)
    assert limited.value.status_code == 429 and limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 59
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="other", messages=messages)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    bad = await _client(limiter, seen, "vlm-wrong", retries=0)
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key provided"):
        await bad.chat.completions.create(model="m", messages=messages)
    await client.close()
    await bad.close()
