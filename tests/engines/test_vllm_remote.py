"""The remote-engine client against a scripted stand-in of vLLM's token-in endpoint (narrow unit test;
tests/e2e drives real vLLM servers)."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec
import pytest
from aiohttp import web

from vlm_gateway.engines import EngineRequest, SamplingParams
from vlm_gateway.engines.vllm_remote import RemoteVLLM
from vlm_gateway.errors import EngineFailed, EngineUnavailable, InvalidRequest, Timeout


class FakeVLLM:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.aborted: list[list[str]] = []
        self.mode = "ok"

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if self.mode == "bad":
            return web.json_response({"error": {"message": "prompt too long", "code": 400}}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        first = {"choices": [{"index": 0, "text": "Hel", "token_ids": [5]}], "prompt_token_ids": [1, 2, 3]}
        await resp.write(b"data: " + msgspec.json.encode(first) + b"\n\n")
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "error":
            await resp.write(b'data: {"error": {"message": "boom"}}\n\n')
        await resp.write(b'data: {"choices": [{"index": 0, "text": "lo", "finish_reason": "length"}]}\n\n')
        await resp.write(b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def abort(self, request: web.Request) -> web.Response:
        self.aborted.append((await request.json())["request_ids"])
        return web.Response()

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()


@pytest.fixture
async def engine():
    fake = FakeVLLM()
    app = web.Application()
    app.router.add_post("/inference/v1/generate", fake.generate)
    app.router.add_post("/inference/v1/abort_requests", fake.abort)
    app.router.add_get("/health", fake.health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        client = RemoteVLLM([f"http://127.0.0.1:{port}"], session)
        await client.start()
        yield fake, client
        await client.close()
    await runner.cleanup()


def request(images: list[str] | None = None, timeout_s: float | None = None) -> EngineRequest:
    return EngineRequest("r1", [1, 2, 3], images or [], SamplingParams(max_tokens=2), timeout_s=timeout_s)


async def test_streams_deltas_and_sends_token_ids_and_images(engine) -> None:
    fake, client = engine
    deltas = [d async for d in client.generate(request(["data:image/png;base64,AAA"]))]
    assert [d.text for d in deltas[:2]] == ["Hel", "lo"]
    assert deltas[0].prompt_token_ids == [1, 2, 3] and deltas[1].finish_reason == "length"
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (3, 2)
    sent = fake.bodies[-1]
    assert sent["token_ids"] == [1, 2, 3] and sent["stream"] is True and sent["output_mode"] == "text"
    assert sent["content_parts"] == [{"type": "image_url", "url": "data:image/png;base64,AAA"}]
    assert sent["sampling_params"]["max_tokens"] == 2
    assert fake.aborted == []  # finished normally: nothing to abort


async def test_engine_400_is_invalid_request(engine) -> None:
    fake, client = engine
    fake.mode = "bad"
    with pytest.raises(InvalidRequest, match="prompt too long"):
        [d async for d in client.generate(request())]


async def test_error_event_mid_stream_is_engine_failed(engine) -> None:
    fake, client = engine
    fake.mode = "error"
    with pytest.raises(EngineFailed, match="boom"):
        [d async for d in client.generate(request())]


async def test_timeout_is_raised_and_request_aborted(engine) -> None:
    fake, client = engine
    fake.mode = "slow"
    with pytest.raises(Timeout):
        [d async for d in client.generate(request(timeout_s=0.5))]
    assert fake.aborted and "generate-tokens-r1" in fake.aborted[-1]


async def test_closing_early_aborts_the_engine_request(engine) -> None:
    fake, client = engine
    fake.mode = "slow"
    stream = client.generate(request())
    await anext(stream)
    await stream.aclose()
    assert fake.aborted and "r1" in fake.aborted[-1]


async def test_no_healthy_server_is_503() -> None:
    async with aiohttp.ClientSession() as session:
        client = RemoteVLLM(["http://127.0.0.1:9"], session)
        await client.start()
        assert not client.ready
        with pytest.raises(EngineUnavailable):
            [d async for d in client.generate(request())]
        await client.close()


async def test_one_failed_health_probe_does_not_take_a_busy_engine_out(engine) -> None:
    _, client = engine
    assert client.ready
    client._servers[0].url += "/no-such-prefix"  # /health now answers 404
    await client._check_health()
    assert client.ready  # one failed probe: still in rotation
    await client._check_health()
    await client._check_health()
    assert not client.ready  # three in a row: out
