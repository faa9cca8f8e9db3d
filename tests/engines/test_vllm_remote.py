"""The remote-engine client against a scripted stand-in of vLLM's token-in endpoint (narrow unit test;
tests/e2e drives real vLLM servers)."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec
import pytest
from aiohttp import web

from vlm_gateway.engines import EngineRequest, SamplingParams
from vlm_gateway.engines.errors import EngineCrashed, EngineDown, EngineRejected, EngineTimeout
from vlm_gateway.engines.pool import EnginePool
from vlm_gateway.engines.vllm_remote import VLLMServer

# vLLM 0.32's own messages (vllm/v1/engine/input_processor.py, vllm/renderers/params.py)
DECODER_TOO_LONG = ("The decoder prompt (length 700) is longer than the maximum model length of 512. Make sure "
                    "that `max_model_len` is no smaller than the number of text tokens plus multimodal tokens.")
CONTEXT_TOO_LONG = ("This model's maximum context length is 512 tokens. However, your prompt contains 700 input "
                    "tokens, which exceeds this limit even without any output tokens. Please reduce the length "
                    "of the input prompt.")


# vLLM's usage with --enable-prompt-tokens-details: 2 of the 3 prompt tokens were in its prefix cache
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 2}}


class FakeVLLM:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.aborted: list[list[str]] = []
        self.peers: set = set()  # the client connections requests came on
        self.mode = "ok"
        self.status, self.message = 400, "prompt too long"  # mode "bad": the HTTP error answered

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.peers.add(request.transport.get_extra_info("peername"))
        if self.mode == "ok" and body.get("stream") is False:  # a whole answer
            return web.json_response({
                "choices": [{"index": 0, "text": "Hello", "token_ids": [5, 6], "finish_reason": "length"}],
                "prompt_token_ids": [1, 2, 3], "usage": USAGE})
        if self.mode == "bad":
            error = {"message": self.message, "type": "BadRequestError", "param": None, "code": self.status}
            return web.json_response({"error": error}, status=self.status)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        first = {"choices": [{"index": 0, "text": "Hel", "token_ids": [5]}], "prompt_token_ids": [1, 2, 3],
                 "mm_placeholders": {"image": [{"offset": 1, "length": 2}]} if body.get("content_parts") else None}
        if self.mode == "big":  # a first event longer than aiohttp's default line limit (a long prompt's ids)
            first["prompt_token_ids"] = [7] * 400_001
        await resp.write(b"data: " + msgspec.json.encode(first) + b"\n\n")
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "cut":  # the body ends early, cleanly: no finish, no [DONE]
            return resp
        if self.mode == "garbage":  # a line that is not vLLM's
            await resp.write(b"data: <html>bad gateway</html>\n\n")

        if self.mode == "error":
            await resp.write(b'data: {"error": {"message": "boom"}}\n\n')
        if self.mode == "error_chunk":  # vLLM validates the prompt inside the stream (stream=true)
            error = {"message": self.message, "type": "BadRequestError", "param": None, "code": self.status}
            await resp.write(b"data: " + msgspec.json.encode({"error": error}) + b"\n\n")
        last = {"choices": [{"index": 0, "text": "lo", "token_ids": [6], "finish_reason": "length"}]}
        await resp.write(b"data: " + msgspec.json.encode(last) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + msgspec.json.encode({"choices": [], "usage": USAGE}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await asyncio.sleep(0.05)  # the body's end comes a moment after [DONE], as from vLLM's server
        return resp

    async def abort(self, request: web.Request) -> web.Response:
        self.aborted.append((await request.json())["request_ids"])
        return web.Response()

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 512}]})


def pool_of(urls: list[str], session: aiohttp.ClientSession, **kwargs) -> EnginePool:
    """The stock vLLM servers at ``urls`` as one model's engine pool."""
    return EnginePool("m", [VLLMServer(url, session) for url in urls], **kwargs)


async def serve_fake(fake: FakeVLLM) -> tuple[web.AppRunner, str]:
    """``fake`` as a server on a free loopback port: its runner (to stop it) and base URL."""
    app = web.Application()
    app.router.add_post("/inference/v1/generate", fake.generate)
    app.router.add_post("/inference/v1/abort_requests", fake.abort)
    app.router.add_get("/health", fake.health)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


@pytest.fixture
async def engine():
    fake = FakeVLLM()
    runner, url = await serve_fake(fake)
    async with aiohttp.ClientSession() as session:
        client = pool_of([url], session)
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
    assert deltas[0].image_tokens == 2  # where the engine put the image's tokens, summed
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens, deltas[-1].cached_tokens) == (3, 2, 2)
    sent = fake.bodies[-1]
    assert sent["token_ids"] == [1, 2, 3] and sent["stream"] is True and sent["output_mode"] == "text"
    assert sent["content_parts"] == [{"type": "image_url", "url": "data:image/png;base64,AAA"}]
    assert sent["sampling_params"]["max_tokens"] == 2
    assert fake.aborted == []  # finished normally: nothing to abort


async def test_a_whole_answer_where_nothing_is_sent_before_the_end(engine) -> None:
    fake, client = engine
    req = request()
    req.stream = False
    deltas = [d async for d in client.generate(req)]
    assert fake.bodies[-1]["stream"] is False
    assert [d.text for d in deltas if d.text] == ["Hello"] and deltas[0].finish_reason == "length"
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens, deltas[-1].cached_tokens) == (3, 2, 2)


async def test_streams_are_read_to_their_end_so_the_connection_is_reused(engine) -> None:
    fake, client = engine
    for _ in range(3):
        assert [d async for d in client.generate(request())]
    assert len(fake.peers) == 1, fake.peers


async def test_max_model_len_is_read_at_start(engine) -> None:
    _, client = engine
    assert client.max_model_len == 512


async def test_engine_400_is_rejected_as_invalid_value(engine) -> None:
    fake, client = engine
    fake.mode = "bad"
    with pytest.raises(EngineRejected, match="prompt too long") as info:
        [d async for d in client.generate(request())]
    assert info.value.kind == "invalid_value"


@pytest.mark.parametrize("message", [DECODER_TOO_LONG, CONTEXT_TOO_LONG,
                                     "Input length (700) exceeds model's maximum context length (512)."])
@pytest.mark.parametrize("mode", ["bad", "error_chunk"])
async def test_context_overflow_is_rejected_as_context_length_exceeded(engine, mode, message) -> None:
    fake, client = engine
    fake.mode, fake.message = mode, message
    with pytest.raises(EngineRejected) as info:
        [d async for d in client.generate(request())]
    assert info.value.kind == "context_length_exceeded" and info.value.message == message


async def test_engine_500_is_crashed(engine) -> None:
    fake, client = engine
    fake.mode, fake.status, fake.message = "bad", 500, "EngineCore died"
    with pytest.raises(EngineCrashed, match="500: EngineCore died"):
        [d async for d in client.generate(request())]


async def test_engine_503_is_down(engine) -> None:
    fake, client = engine
    fake.mode, fake.status, fake.message = "bad", 503, "Request failed; please retry"
    with pytest.raises(EngineDown):
        [d async for d in client.generate(request())]


async def test_engine_503_after_the_first_output_is_crashed(engine) -> None:
    """Output was already passed on: the request cannot move to another server (tests/engines/test_pool.py)."""
    fake, client = engine
    fake.mode, fake.status, fake.message = "error_chunk", 503, "Request failed; please retry"
    with pytest.raises(EngineCrashed, match="mid-answer: Request failed"):
        [d async for d in client.generate(request())]


async def test_error_event_mid_stream_is_engine_crashed(engine) -> None:
    fake, client = engine
    fake.mode = "error"
    with pytest.raises(EngineCrashed, match="boom"):
        [d async for d in client.generate(request())]


async def test_timeout_is_raised_and_request_aborted(engine) -> None:
    fake, client = engine
    fake.mode = "slow"
    with pytest.raises(EngineTimeout):
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
        client = pool_of(["http://127.0.0.1:9"], session)
        await client.start()
        assert not client.ready and client.max_model_len is None
        with pytest.raises(EngineDown) as info:
            [d async for d in client.generate(request())]
        assert info.value.retry_after_s
        await client.close()


async def test_a_stream_cut_short_or_unreadable_is_the_engines_failure(engine) -> None:
    fake, client = engine
    fake.mode = "cut"
    with pytest.raises(EngineCrashed, match="mid-answer.*ended before its end"):  # output had begun
        [d async for d in client.generate(request())]
    fake.mode = "garbage"
    with pytest.raises(EngineCrashed, match="could not be read"):
        [d async for d in client.generate(request())]


async def test_a_long_first_event_is_read(engine) -> None:
    fake, client = engine
    fake.mode = "big"
    deltas = [d async for d in client.generate(request())]
    assert len(deltas[0].prompt_token_ids) == 400_001 and "".join(d.text for d in deltas) == "Hello"


async def test_the_pools_time_limit_applies_when_tighter(engine) -> None:
    fake, _ = engine
    fake.mode = "slow"
    async with aiohttp.ClientSession() as session:
        client = pool_of([_url(engine)], session, request_timeout_s=0.3)
        client.members[0].healthy = True
        with pytest.raises(EngineTimeout, match="0.3 s"):
            [d async for d in client.generate(request(timeout_s=30))]


def _url(engine) -> str:
    return engine[1].members[0].url


async def test_connection_refused_is_down() -> None:
    async with aiohttp.ClientSession() as session:
        client = pool_of(["http://127.0.0.1:9"], session)
        client.members[0].healthy = True  # was up; nothing listens now
        with pytest.raises(EngineDown, match="could take the request") as down:
            [d async for d in client.generate(request())]
        assert not client.ready
        assert down.value.retry_after_s == 5 and "127.0.0.1" not in down.value.message  # (in the log only)


async def test_one_failed_health_probe_does_not_take_a_busy_engine_out(engine) -> None:
    _, client = engine
    assert client.ready
    client.members[0].server.url += "/no-such-prefix"  # /health now answers 404
    await client.check_health()
    assert client.ready  # one failed probe: still in rotation
    await client.check_health()
    await client.check_health()
    assert not client.ready  # three in a row: out
