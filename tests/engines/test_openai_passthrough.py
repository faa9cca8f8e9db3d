"""The OpenAI pass-through engine server against a scripted stand-in of an OpenAI-compatible server (narrow
unit tests; no engine runs)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import aiohttp
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDict

from vlm_gateway.engines import Candidate, ChatInput, EngineDelta, EngineRequest, SamplingParams, TokenLogprob
from vlm_gateway.engines.errors import (
    EngineCrashed,
    EngineDown,
    EngineRejected,
    EngineTimeout,
    EngineUnreachable,
)
from vlm_gateway.engines.openai_passthrough import OpenAIServer

IMAGE = "data:image/png;base64,AAA"
MESSAGES = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}},
                                         {"type": "text", "text": "What is this?"}]}]
TOOLS = [{"type": "function", "function": {"name": "look", "parameters": {"type": "object", "properties": {}}}}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
HEL_TOP = [{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108]},
           {"token": "Hi", "logprob": -2.5, "bytes": [72, 105]}]


def chat_chunk(content: str | None, finish: str | None = None, logprobs: bool = False) -> dict:
    delta = {"role": "assistant", "content": ""} if content is None else {"content": content}
    lp = {"content": [{"token": content, "logprob": -0.1, "bytes": list(content.encode()),
                       "top_logprobs": HEL_TOP}]} if logprobs and content else None
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}


def completion_chunk(text: str, finish: str | None = None, logprobs: bool = False) -> dict:
    lp = {"text_offset": [0], "tokens": [text], "token_logprobs": [-0.1],
          "top_logprobs": [{text: -0.1, "Hi": -2.5}]} if logprobs else None
    return {"id": "c1", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}


class FakeOpenAI:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.headers: list[CIMultiDict[str]] = []
        self.mode = "ok"  # ok | no_usage | bad | error_chunk | slow | endless
        self.status, self.message = 400, "bad request"  # mode "bad": the HTTP error answered
        self.bad_left = 0  # answers still to fail as in mode "bad", whatever the mode
        self.models_status = 200
        self.release = asyncio.Event()  # ends a "slow" answer
        self.disconnected = asyncio.Event()  # an "endless" answer's client went away

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def _answer(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(request.headers.copy())
        if self.mode == "bad" or self.bad_left > 0:
            self.bad_left -= 1
            error = {"message": self.message, "type": "BadRequestError", "param": None, "code": self.status}
            return web.json_response({"error": error}, status=self.status)
        chunk = chat_chunk if chat else completion_chunk
        logprobs = "logprobs" in body
        if body.get("stream") is False:  # a whole answer: the chunks' text in one choice, as OpenAI sends it
            whole = chunk("Hello", "stop", logprobs=logprobs)
            if chat:
                whole["choices"][0]["message"] = {"role": "assistant", **whole["choices"][0].pop("delta")}
            return web.json_response({**whole, **({} if self.mode == "no_usage" else {"usage": USAGE["usage"]})})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(data: dict) -> None:
            await resp.write(b"data: " + msgspec.json.encode(data) + b"\n\n")

        if chat:
            await send(chat_chunk(None))  # the role-only first chunk
        await send(chunk("Hel", logprobs=logprobs))
        if self.mode == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 5)
        if self.mode == "endless":
            try:
                for _ in range(200):
                    await asyncio.sleep(0.05)
                    await send(chunk("la"))
            except (ConnectionError, asyncio.CancelledError):
                self.disconnected.set()
                raise
        if self.mode == "error_chunk":
            await send({"error": {"message": "boom", "type": "InternalServerError", "code": 500}})
        await send(chunk("lo", "stop", logprobs=logprobs))
        if self.mode != "no_usage":
            await send(USAGE)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(self, request: web.Request) -> web.Response:
        self.headers.append(request.headers.copy())
        if self.models_status != 200:
            return web.json_response({"error": {"message": "no"}}, status=self.models_status)
        return web.json_response({"object": "list", "data": [{"id": "other", "object": "model", "max_model_len": 1024},
                                                             {"id": "m", "object": "model", "max_model_len": 512}]})


async def serve_fake(fake: FakeOpenAI) -> tuple[web.AppRunner, str]:
    """``fake`` as a server on a free loopback port: its runner (to stop it) and base URL (with ``/v1``)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/v1/completions", fake.completions)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def served(session):
    fake = FakeOpenAI()
    runner, url = await serve_fake(fake)
    yield fake, OpenAIServer(url + "/", session, model="m", api_key="sk-test")
    fake.release.set()
    await runner.cleanup()


def chat_request(sampling: SamplingParams | None = None, tools: list | None = None) -> EngineRequest:
    return EngineRequest("r1", [1, 2, 3, 4], [IMAGE], sampling or SamplingParams(),
                         chat=ChatInput(MESSAGES, tools))


def completion_request(sampling: SamplingParams | None = None, images: list[str] | None = None) -> EngineRequest:
    return EngineRequest("r2", [1, 2, 3], images or [], sampling or SamplingParams())


async def collect(server: OpenAIServer, request: EngineRequest, total_s: float = 30.0) -> list[EngineDelta]:
    return [d async for d in server.generate(request, time.monotonic() + total_s, total_s)]


# --- request bodies ---

async def test_chat_body_carries_messages_model_stream_and_headers(served) -> None:
    fake, server = served
    await collect(server, chat_request())
    body, headers = fake.bodies[-1], fake.headers[-1]
    assert body == {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    assert headers["Authorization"] == "Bearer sk-test" and headers["X-Request-Id"] == "r1"
    assert headers["Content-Type"] == "application/json"


async def test_chat_sampling_is_mapped_to_openai_names(served) -> None:
    fake, server = served
    sampling = SamplingParams(max_tokens=5, temperature=0.5, top_p=0.9, n=2, stop=["\n"], stop_token_ids=[7],
                              seed=3, presence_penalty=0.1, frequency_penalty=0.2, logprobs=2, min_tokens=1,
                              logit_bias={42: -100.0}, ignore_eos=True,
                              structured_outputs={"json": SCHEMA, "disable_any_whitespace": True})
    await collect(server, chat_request(sampling))
    body = fake.bodies[-1]
    expected = {"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "n": 2, "stop": ["\n"], "seed": 3,
                "presence_penalty": 0.1, "frequency_penalty": 0.2, "logprobs": True, "top_logprobs": 2,
                "min_tokens": 1, "ignore_eos": True, "logit_bias": {"42": -100.0},
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "output", "schema": SCHEMA, "strict": True}}}
    assert {k: body[k] for k in expected} == expected
    assert "stop_token_ids" not in body and "structured_outputs" not in body


async def test_defaults_are_not_sent(served) -> None:
    fake, server = served
    await collect(server, chat_request(SamplingParams(logprobs=0)))
    body = fake.bodies[-1]
    assert body["logprobs"] is True and "top_logprobs" not in body
    for name in ("n", "min_tokens", "ignore_eos", "max_tokens", "temperature", "stop", "tools", "tool_choice"):
        assert name not in body


@pytest.mark.parametrize(("structured", "sent"), [
    ({"json_object": True, "disable_any_whitespace": True}, {"response_format": {"type": "json_object"}}),
    ({"regex": "[0-9]+"}, {"structured_outputs": {"regex": "[0-9]+"}}),
    ({"choice": ["a", "b"]}, {"structured_outputs": {"choice": ["a", "b"]}}),
])
async def test_chat_structured_outputs(served, structured, sent) -> None:
    fake, server = served
    await collect(server, chat_request(SamplingParams(structured_outputs=structured)))
    body = fake.bodies[-1]
    assert {k: body.get(k) for k in sent} == sent
    assert ("response_format" in body) != ("structured_outputs" in body)


async def test_chat_tools_are_shown_with_tool_choice_none(served) -> None:
    fake, server = served
    await collect(server, chat_request(tools=TOOLS))
    assert fake.bodies[-1]["tools"] == TOOLS and fake.bodies[-1]["tool_choice"] == "none"


async def test_completions_body_sends_token_ids_and_logprobs_count(served) -> None:
    fake, server = served
    await collect(server, completion_request(SamplingParams(logprobs=3, structured_outputs={"json": SCHEMA})))
    body = fake.bodies[-1]
    assert body["prompt"] == [1, 2, 3] and body["model"] == "m" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and "messages" not in body
    assert body["logprobs"] == 3 and "top_logprobs" not in body
    assert body["structured_outputs"] == {"json": SCHEMA} and "response_format" not in body


async def test_completions_with_images_are_rejected_before_any_call(served) -> None:
    fake, server = served
    with pytest.raises(EngineRejected, match="images in chat requests only"):
        await collect(server, completion_request(images=[IMAGE]))
    assert fake.bodies == []


@pytest.mark.parametrize("make", [chat_request, completion_request])
async def test_prompt_logprobs_are_rejected(served, make) -> None:
    fake, server = served
    with pytest.raises(EngineRejected, match="prompt logprobs are not available"):
        await collect(server, make(SamplingParams(prompt_logprobs=1)))
    assert fake.bodies == []


async def test_a_whole_answer_where_nothing_is_sent_before_the_end(served) -> None:
    fake, server = served
    for make, path_key in ((chat_request, "messages"), (completion_request, "prompt")):
        request = make(SamplingParams(logprobs=1))
        request.stream = False
        deltas = await collect(server, request)
        body = fake.bodies[-1]
        assert path_key in body and body["stream"] is False and "stream_options" not in body
        assert [(d.text, d.finish_reason) for d in deltas] == [("Hello", "stop"), ("", None)]
        assert deltas[0].logprobs[0].token == "Hello"
        assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (7, 2)
    fake.mode = "no_usage"
    request = chat_request()
    request.stream = False
    assert (await collect(server, request))[-1].completion_tokens == 1  # the estimate: one piece of text


# --- streamed deltas ---

async def test_chat_stream_becomes_deltas(served) -> None:
    _, server = served
    deltas = await collect(server, chat_request(SamplingParams(logprobs=2)))
    assert [d.text for d in deltas] == ["Hel", "lo", ""]  # the role-only chunk is skipped
    assert [d.finish_reason for d in deltas] == [None, "stop", None]
    top = [Candidate("Hel", -0.1, [72, 101, 108]), Candidate("Hi", -2.5, [72, 105])]
    assert deltas[0].logprobs == [TokenLogprob("Hel", -0.1, [72, 101, 108], top)]
    assert deltas[1].logprobs == [TokenLogprob("lo", -0.1, [108, 111], top)]
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (7, 2)


async def test_completion_stream_becomes_deltas(served) -> None:
    _, server = served
    deltas = await collect(server, completion_request(SamplingParams(logprobs=2)))
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    assert [d.finish_reason for d in deltas] == [None, "stop", None]
    assert deltas[0].logprobs == [TokenLogprob("Hel", -0.1, None, [Candidate("Hel", -0.1), Candidate("Hi", -2.5)])]
    assert deltas[1].logprobs == [TokenLogprob("lo", -0.1, None, [Candidate("lo", -0.1), Candidate("Hi", -2.5)])]
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (7, 2)


async def test_no_logprobs_asked_gives_none(served) -> None:
    _, server = served
    deltas = await collect(server, chat_request())
    assert all(d.logprobs is None for d in deltas)


@pytest.mark.parametrize("make", [chat_request, completion_request])
async def test_missing_usage_is_estimated(served, make) -> None:
    fake, server = served
    fake.mode = "no_usage"
    request = make()
    deltas = await collect(server, request)
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    usage = [d for d in deltas if d.prompt_tokens is not None]
    assert len(usage) == 1 and usage[0] is deltas[-1]
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (len(request.token_ids), 2)


# --- errors ---

@pytest.mark.parametrize(("status", "message", "error", "kind"), [
    (400, "temperature must be non-negative", EngineRejected, "invalid_value"),
    (400, "This model's maximum context length is 512 tokens. However, you requested 700 tokens.",
     EngineRejected, "context_length_exceeded"),
    (503, "overloaded", EngineDown, None),
    (500, "internal", EngineCrashed, None),
])
async def test_http_errors(served, status, message, error, kind) -> None:
    fake, server = served
    fake.mode, fake.status, fake.message = "bad", status, message
    with pytest.raises(error, match=message[:20]) as info:
        await collect(server, chat_request())
    assert type(info.value) is error
    if kind:
        assert info.value.kind == kind


async def test_a_request_with_images_that_fails_before_any_output_goes_once_more(served) -> None:
    """A stock vLLM may have sent an image by key to an engine that never got it: a 500 before any output,
    after which vLLM has forgotten the key. Once more, and only once; a text-only request is not retried."""
    fake, server = served
    fake.status, fake.message, fake.bad_left = 500, "Internal server error", 1
    deltas = await collect(server, chat_request())
    assert "".join(d.text for d in deltas) == "Hello" and len(fake.bodies) == 2 and fake.bodies[0] == fake.bodies[1]
    fake.bad_left = 2
    with pytest.raises(EngineCrashed, match="Internal server error"):
        await collect(server, chat_request())
    assert len(fake.bodies) == 4
    fake.bad_left = 1
    with pytest.raises(EngineCrashed):
        await collect(server, completion_request())
    assert len(fake.bodies) == 5


async def test_error_chunk_mid_stream_is_crashed(served) -> None:
    fake, server = served
    fake.mode = "error_chunk"
    with pytest.raises(EngineCrashed, match="boom"):
        await collect(server, chat_request())


async def test_refused_connection_is_unreachable(session) -> None:
    server = OpenAIServer(closed_port_url(), session, model="m")
    with pytest.raises(EngineUnreachable, match="connection failed"):
        await collect(server, chat_request())


async def test_deadline_is_a_timeout(served) -> None:
    fake, server = served
    fake.mode = "slow"
    with pytest.raises(EngineTimeout, match="longer than 0.3 s"):
        await collect(server, chat_request(), total_s=0.3)


async def test_closing_early_closes_the_connection(served) -> None:
    fake, server = served
    fake.mode = "endless"
    stream = server.generate(chat_request(), time.monotonic() + 30, 30)
    first = await anext(stream)
    assert first.text == "Hel"
    await stream.aclose()
    await asyncio.wait_for(fake.disconnected.wait(), 5)


# --- probe and context length ---

async def test_probe_up_and_down(served) -> None:
    fake, server = served
    assert await server.probe() == "up"
    assert fake.headers[-1]["Authorization"] == "Bearer sk-test"
    fake.models_status = 500
    assert await server.probe() == "down"


async def test_probe_refused(session) -> None:
    assert await OpenAIServer(closed_port_url(), session, model="m").probe() == "refused"


async def test_read_max_model_len_picks_the_model_entry(served, session) -> None:
    fake, server = served
    assert await server.read_max_model_len() == 512
    assert await OpenAIServer(server.url, session, model="unknown").read_max_model_len() == 1024  # the first
    fake.models_status = 500
    assert await server.read_max_model_len() is None
    assert await OpenAIServer(closed_port_url(), session, model="m").read_max_model_len() is None


async def test_url_trailing_slash_is_stripped(served) -> None:
    _, server = served
    assert server.url.endswith("/v1")
