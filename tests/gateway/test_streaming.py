"""SSE shaping from engine deltas (a scripted engine stream; no engine involved)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from vlm_gateway.engines import Candidate, EngineDelta, EngineRequest, SamplingParams, TokenLogprob
from vlm_gateway.errors import EngineFailed
from vlm_gateway.limits import Permit
from vlm_gateway.pipeline import Prepared
from vlm_gateway.streaming import DONE, EventStream, chat_events, completion_events
from vlm_gateway.usage import Tally


class _Model(msgspec.Struct):
    id: str = "m"


PREPARED: list[Prepared] = []


def prepared(n: int = 1, images: int = 1, logprobs: int | None = 0) -> Prepared:
    req = EngineRequest("chatcmpl-1", [1, 2, 3, 9], ["data:,"] * images, SamplingParams(n=n, logprobs=logprobs))
    out = Prepared(model=_Model(), model_name="m", engine_requests=[req], response_id="chatcmpl-1", created=7,
                   prompt_param="messages", tally=Tally(4, images), permit=Permit({}, 30))
    PREPARED.append(out)
    return out


async def scripted(deltas, fail: Exception | None = None, closed: list | None = None):
    """The engine's deltas as ``pipeline.generate`` passes them on: usage goes to the tally."""
    tally = PREPARED[-1].tally
    try:
        for d in deltas:
            if not tally.take(d):
                yield d
        if fail:
            raise fail
    finally:
        if closed is not None:
            closed.append(True)


def events(raw: list[bytes]) -> list:
    assert raw[-1] == DONE
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in raw)
    return [msgspec.json.decode(e[6:]) for e in raw[:-1]]


SCRIPT = [
    EngineDelta(0, "Hel", prompt_token_ids=list(range(600))),
    EngineDelta(0, "lo", finish_reason="length"),
    EngineDelta(prompt_tokens=600, completion_tokens=2, cached_tokens=512),  # 512 were in the prefix cache
]


async def test_chat_stream_role_text_finish_usage() -> None:
    out = events([e async for e in chat_events(prepared(), scripted(SCRIPT), include_usage=True,
                                               return_token_ids=False)])
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in out[1:3]] == ["Hel", "lo"]
    assert out[2]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in out)
    assert out[-1]["choices"] == []
    # 4 ids sent with one image placeholder; the engine saw 600 → 597 image tokens
    assert out[-1]["usage"] == {"prompt_tokens": 600, "completion_tokens": 2, "total_tokens": 602,
                                "prompt_tokens_details": {"cached_tokens": 512, "image_tokens": 597}}
    assert "prompt_token_ids" not in out[1]
    assert all(c["usage"] is None for c in out[:-1])  # OpenAI's: a null on every other chunk


async def test_usage_chunk_only_when_asked_and_ids_when_asked() -> None:
    out = events([e async for e in chat_events(prepared(), scripted(SCRIPT), include_usage=False,
                                               return_token_ids=True)])
    assert all("usage" not in c for c in out)
    assert out[1]["prompt_token_ids"] == list(range(600))


async def test_error_mid_stream_becomes_error_event_and_engine_stream_is_closed() -> None:
    closed: list = []
    raw = [e async for e in chat_events(prepared(), scripted(SCRIPT[:1], EngineFailed("boom"), closed),
                                        include_usage=True, return_token_ids=False)]
    out = events(raw)
    assert out[-1] == {"error": {"message": "boom", "type": "server_error", "param": None,
                                 "code": "engine_error"}}
    assert closed == [True]


async def test_consumer_leaving_early_closes_the_engine_stream() -> None:
    closed: list = []
    stream = chat_events(prepared(), scripted(SCRIPT, closed=closed), include_usage=True, return_token_ids=False)
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert closed == [True]


async def test_completion_stream_and_n_choices() -> None:
    script = [EngineDelta(0, "a"), EngineDelta(1, "b"), EngineDelta(0, "", finish_reason="stop"),
              EngineDelta(1, "c", finish_reason="abort"), EngineDelta(prompt_tokens=4, completion_tokens=3)]
    out = events([e async for e in completion_events(prepared(n=2, images=0), scripted(script),
                                                     include_usage=True, return_token_ids=False)])
    assert [(c["choices"][0]["index"], c["choices"][0]["text"], c["choices"][0]["finish_reason"])
            for c in out[:-1]] == [(0, "a", None), (1, "b", None), (0, "", "stop"), (1, "c", "stop")]
    assert out[-1]["usage"]["prompt_tokens_details"]["image_tokens"] == 0
    assert all(c["usage"] is None for c in out[:-1])


def lp(token: str, raw: bytes) -> list[TokenLogprob]:
    return [TokenLogprob(token, -0.5, list(raw), [Candidate(token, -0.5, list(raw))])]


# "Café": the é is two byte tokens; the engine's step for the first byte has no text yet
SPLIT = [EngineDelta(0, "Caf", logprobs=lp("Caf", b"Caf")), EngineDelta(0, "", logprobs=lp("<0xC3>", b"\xc3")),
         EngineDelta(0, "é", finish_reason="length", logprobs=lp("<0xA9>", b"\xa9"))]


async def test_streamed_logprobs_keep_tokens_that_have_no_text_yet() -> None:
    out = events([e async for e in chat_events(prepared(images=0), scripted(SPLIT), include_usage=False,
                                               return_token_ids=False)])
    chunks = [c["choices"][0] for c in out[1:]]
    assert [c["delta"].get("content") for c in chunks] == ["Caf", "é"]
    tokens = [e["token"] for c in chunks for e in c["logprobs"]["content"]]
    assert tokens == ["Caf", "<0xC3>", "<0xA9>"]  # as the whole answer lists them
    assert bytes(b for c in chunks for e in c["logprobs"]["content"] for b in e["bytes"]).decode() == "Café"


async def test_streamed_completion_logprobs_keep_tokens_that_have_no_text_yet() -> None:
    out = events([e async for e in completion_events(prepared(images=0), scripted(SPLIT), include_usage=False,
                                                     return_token_ids=False)])
    parts = [c["choices"][0]["logprobs"] for c in out]
    assert [t for p in parts for t in p["tokens"]] == ["Caf", "<0xC3>", "<0xA9>"]
    assert [o for p in parts for o in p["text_offset"]] == [0, 3, 9]


def test_usage_counts_the_image_tokens_the_engine_placed() -> None:
    """A placeholder may be several tokens (Phi-3.5-vision's ``<|image_1|>``): the engine's own count wins over
    the estimate that takes each placeholder as one token."""
    estimated, told = Tally(sent_tokens=10, image_count=1), Tally(sent_tokens=10, image_count=1)
    for tally, image_tokens in ((estimated, None), (told, 50)):
        tally.take(EngineDelta(text="a", prompt_token_ids=list(range(56)), image_tokens=image_tokens))
        tally.take(EngineDelta(prompt_tokens=56, completion_tokens=1))
    assert estimated.usage().prompt_tokens_details.image_tokens == 56 - 9
    assert told.usage().prompt_tokens_details.image_tokens == 50
    assert Tally(sent_tokens=3, image_count=0).usage().prompt_tokens_details.image_tokens == 0


class _Client:
    """An ASGI client side: records what is sent; ``receive`` waits until told the client went away (uvicorn
    also answers ``http.disconnect`` once the response is complete)."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.gone = asyncio.Event()

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.gone.set()

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def body(self) -> list[tuple[bytes, bool]]:
        return [(m["body"], m["more_body"]) for m in self.sent if m["type"] == "http.response.body"]


async def _serve(events, client: _Client) -> None:
    response = EventStream(events, {"X-Test": "1"}).to_asgi_response(None, request=None)  # type: ignore[arg-type]
    await response({"type": "http"}, client.receive, client.send)  # type: ignore[arg-type]


async def test_event_stream_sends_each_event_then_ends() -> None:
    async def gen():
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            yield part
            await asyncio.sleep(0)

    client = _Client()
    await _serve(gen(), client)
    start = client.sent[0]
    assert start["status"] == 200 and (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"cache-control", b"no-cache") in start["headers"] and (b"x-test", b"1") in start["headers"]
    assert client.body() == [(b"data: 1\n\n", True), (b"data: 2\n\n", True), (b"", False)]


async def test_event_stream_client_gone_closes_the_events() -> None:
    closed, never = [], asyncio.Event()

    async def gen():
        try:
            yield b"data: 1\n\n"
            await never.wait()  # the engine's next token, which the client no longer waits for
            yield b"data: 2\n\n"
        finally:
            closed.append(True)

    client = _Client()
    serving = asyncio.create_task(_serve(gen(), client))
    while not client.body():
        await asyncio.sleep(0)
    client.gone.set()
    await serving  # ends without an error: the client went away, nothing failed
    assert closed == [True] and client.body() == [(b"data: 1\n\n", True)]
    assert not serving.cancelled()


async def test_event_stream_server_stop_propagates() -> None:
    started, never = asyncio.Event(), asyncio.Event()

    async def gen():
        started.set()
        await never.wait()
        yield b"data: 1\n\n"

    serving = asyncio.create_task(_serve(gen(), _Client()))
    await started.wait()
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving


def test_tokens_of_an_answer_cut_short_are_spent() -> None:
    """A client that leaves mid-answer (or an engine that fails) never gets the usage chunk: tokens/min is
    charged the prompt and the tokens sent so far, not nothing."""
    tally = Tally(sent_tokens=4, image_count=0)
    assert tally.spent == 0  # the engine sent nothing: nothing spent
    tally.take(EngineDelta(0, "Hel", token_ids=[5], prompt_token_ids=[1, 2, 3, 9, 9]))
    tally.take(EngineDelta(0, "lo", token_ids=[6, 7]))
    assert tally.spent == 5 + 3
    tally.take(EngineDelta(prompt_tokens=5, completion_tokens=4))  # the engine's own count wins
    assert tally.spent == 9
