"""Step 7 for streamed requests: engine deltas → OpenAI chunks → server-sent events.

``chat_chunks`` / ``completion_chunks`` turn the deltas into OpenAI's chunk Structs (the Responses
API builds its own events from ``chat_chunks``); ``sse_events`` writes them as ``data: {json}\\n\\n``
and ends with ``data: [DONE]\\n\\n``. An error after the first byte can no longer change the status
code, so it is sent as an OpenAI error event. Closing the stream early (client gone) closes the
engine iterator, which aborts the engine request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send
from msgspec import UNSET

from vlm_gateway.engines import EngineDelta
from vlm_gateway.errors import GatewayError
from vlm_gateway.logprobs import CompletionLogprobs, chat_logprobs
from vlm_gateway.pipeline import Prepared, Services, generate
from vlm_gateway.responses import finish_reason
from vlm_gateway.schemas.openai import (
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    StreamOptions,
    ToolCallDelta,
)
from vlm_gateway.tools import ToolCallStream

_ENCODER = msgspec.json.Encoder()
log = logging.getLogger("vlm_gateway")
DONE = b"data: [DONE]\n\n"
# A streamed answer whose client takes no chunk for this long (up to twice as long: it is looked at every
# so often) is stopped, its engine request and key slot freed: a reader that stopped reading must not hold
# them past any timeout.
SEND_STALL_S = 30.0


def sse(body: msgspec.Struct) -> bytes:
    return b"data: " + _ENCODER.encode(body) + b"\n\n"


async def prepend(first: EngineDelta, rest: AsyncIterator[EngineDelta]) -> AsyncIterator[EngineDelta]:
    yield first
    async for delta in rest:
        yield delta


class _Ids:
    """The engine's prompt ids go out once, with the first chunk that has them (``return_token_ids``)."""

    def __init__(self, wanted: bool) -> None:
        self.sent = not wanted

    def take(self, delta: EngineDelta | None) -> list[int] | msgspec.UnsetType:
        ids = delta.prompt_token_ids if delta is not None and not self.sent else None
        self.sent = self.sent or ids is not None
        return ids or UNSET


async def chat_chunks(prepared: Prepared, deltas: AsyncIterator[EngineDelta], *, include_usage: bool = False,
                      return_token_ids: bool = False) -> AsyncIterator[ChatCompletionChunk]:
    """The chat chunks: each choice's role first, then its text (with logprobs when asked) and finish
    reason, then usage when asked. Engine failures are raised (``GatewayError``)."""
    top = prepared.sampling.logprobs
    ids = _Ids(return_token_ids)
    no_usage = None if include_usage else UNSET  # OpenAI's: with usage asked for, every other chunk has a null

    def chunk(choices: list[ChunkChoice], **extra) -> ChatCompletionChunk:
        return ChatCompletionChunk(prepared.response_id, prepared.created, prepared.model_name, choices,
                                   **{"usage": no_usage, **extra})

    calls = ToolCalls(prepared)
    held: dict[int, list] = {}  # per choice, the logprobs of tokens whose text is not out yet (a split
    # character, a possible stop string or tool call): they go with the choice's next chunk
    try:
        for i in range(prepared.choices):
            yield chunk([ChunkChoice(i, Delta(role="assistant", content=""))])
        async for delta in deltas:
            prompt_ids = ids.take(delta)
            text, tool_calls = calls.feed(delta)
            finish = calls.finish_reason(delta)
            entries = chat_logprobs(delta.logprobs or [], top) if top is not None else []
            if text or tool_calls or finish or prompt_ids:
                logprobs = ChoiceLogprobs(held.pop(delta.index, []) + entries) if top is not None else None
                # one tool-call piece per chunk, as OpenAI streams them (clients' accumulators read one;
                # two pieces of one call in one chunk lost its arguments in LlamaIndex and openai 1.x)
                pieces: list[ToolCallDelta | None] = list(tool_calls) or [None]
                for k, piece in enumerate(pieces):
                    first, last = k == 0, k == len(pieces) - 1
                    yield chunk([ChunkChoice(delta.index, Delta(content=(text or None) if first else None,
                                                                tool_calls=[piece] if piece else None),
                                             finish if last else None, logprobs if first else None)],
                                prompt_token_ids=prompt_ids if first else UNSET)
            elif entries:
                held.setdefault(delta.index, []).extend(entries)
        if include_usage:
            yield chunk([], usage=prepared.tally.usage())
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


class ToolCalls:
    """Per choice, the request's tool calls read out of streamed text (``tools.ToolCallStream``): text
    that could be the start of a call is held back until it is one or is not."""

    def __init__(self, prepared: Prepared) -> None:
        self.parsing = prepared.tool_parsing
        self.streams: dict[int, ToolCallStream] = {}
        self.called: set[int] = set()

    def feed(self, delta: EngineDelta) -> tuple[str, list[ToolCallDelta]]:
        if self.parsing is None:
            return delta.text, []
        stream = self.streams.setdefault(delta.index, ToolCallStream(self.parsing.format, self.parsing.tools))
        pieces = [stream.feed(delta.text)] if delta.text else []
        if delta.finish_reason is not None:
            pieces.append(stream.finish(cut=delta.finish_reason == "length"))
        calls = [c for p in pieces for c in p.calls if not (self.parsing.one_call and c.index > 0)]
        if calls:
            self.called.add(delta.index)
        return "".join(p.content for p in pieces), calls

    def finish_reason(self, delta: EngineDelta) -> str | None:
        reason = finish_reason(delta.finish_reason)
        return "tool_calls" if reason not in (None, "length") and delta.index in self.called else reason


async def completion_chunks(prepared: Prepared, deltas: AsyncIterator[EngineDelta], *, include_usage: bool = False,
                            return_token_ids: bool = False) -> AsyncIterator[Completion]:
    """The completions chunks; with ``echo`` each choice's first chunk starts with its prompt."""
    top, n = prepared.sampling.logprobs, prepared.sampling.n
    ids = _Ids(return_token_ids)
    no_usage = None if include_usage else UNSET
    logprobs = {i: CompletionLogprobs(top) for i in range(prepared.choices)} if top is not None else {}
    sent = dict.fromkeys(logprobs, 0)  # per choice, the tokens whose logprobs a chunk has carried
    started: set[int] = set()

    def chunk(choices: list[CompletionChoice], **extra) -> Completion:
        return Completion(prepared.response_id, prepared.created, prepared.model_name, choices,
                          **{"usage": no_usage, **extra})

    try:
        async for delta in deltas:
            prompt_ids = ids.take(delta)
            echo = prepared.echo[delta.index // n] if prepared.echo and delta.index not in started else None
            started.add(delta.index)
            text, part = (echo.text if echo else "") + delta.text, None
            if logprobs:
                built = logprobs[delta.index]
                if echo is not None and delta.prompt_logprobs is not None:
                    built.take(delta.prompt_logprobs, echo.first_token)
                built.take(list(delta.logprobs or []))
            if text or delta.finish_reason or prompt_ids:
                if logprobs:  # with those of tokens whose text was not out yet (a split character, …)
                    part = logprobs[delta.index].since(sent[delta.index])
                    sent[delta.index] = len(logprobs[delta.index].all.tokens)
                yield chunk([CompletionChoice(delta.index, text, finish_reason(delta.finish_reason), part)],
                            prompt_token_ids=prompt_ids)
        if include_usage:
            yield chunk([], usage=prepared.tally.usage())
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


async def sse_events(chunks: AsyncIterator[msgspec.Struct]) -> AsyncIterator[bytes]:
    """The chunks as events; a failure on the way ends the stream with its error event (then ``[DONE]``),
    never with a cut connection."""
    try:
        async for body in chunks:
            yield sse(body)
    except GatewayError as exc:
        yield sse(exc.body())
    except Exception as exc:  # a bug of the gateway's own: logged, and told as OpenAI's server_error
        log.exception("stream failed", exc_info=exc)
        yield sse(GatewayError("internal server error").body())
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE


def chat_events(prepared: Prepared, deltas: AsyncIterator[EngineDelta], *, include_usage: bool,
                return_token_ids: bool) -> AsyncIterator[bytes]:
    return sse_events(chat_chunks(prepared, deltas, include_usage=include_usage, return_token_ids=return_token_ids))


def completion_events(prepared: Prepared, deltas: AsyncIterator[EngineDelta], *, include_usage: bool,
                      return_token_ids: bool) -> AsyncIterator[bytes]:
    return sse_events(completion_chunks(prepared, deltas, include_usage=include_usage,
                                        return_token_ids=return_token_ids))


Events = Callable[..., AsyncIterator[bytes]]


class _EventStreamBody(ASGIStreamingResponse):
    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        """Each chunk as one body event while a plain task watches for the client going away, and a timer
        for a client that takes nothing (``SEND_STALL_S``: it looks every so often; a chunk armed with a
        timer of its own cost more). If the client goes or stalls, this task is cancelled inside the
        iterator or the send, and the iterator's ``finally`` aborts the engine request."""
        streaming = asyncio.current_task()
        assert streaming is not None
        loop = asyncio.get_running_loop()
        done = stalled = False
        sending = 0.0  # when the chunk being sent began to wait for the client (0: none is)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done and not stalled:  # (one cancellation: the one that is undone below)
                streaming.cancel()

        def look() -> None:
            nonlocal stalled, timer
            if sending and loop.time() - sending >= SEND_STALL_S and not watcher.done():
                stalled = True
                streaming.cancel()
            else:
                timer = loop.call_at((sending or loop.time()) + SEND_STALL_S, look)

        watcher = asyncio.create_task(watch())
        timer = loop.call_later(SEND_STALL_S, look)
        try:
            async for chunk in self.iterator:
                sending = loop.time()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})  # type: ignore[typeddict-item]
                sending = 0.0
            done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if stalled:  # the client takes nothing: stopped (the engine request, the key's slot), unfinished
                streaming.uncancel()
                log.warning("a stream's client read nothing for %g s: the stream is stopped", SEND_STALL_S)
                close = getattr(self.iterator, "aclose", None)
                if close is not None:
                    await close()
            elif not watcher.done() or watcher.cancelled():
                raise  # not the client's going: the server is stopping
            else:
                streaming.uncancel()  # the client went away: the response is over, nothing failed
        finally:
            timer.cancel()
            watcher.cancel()  # before it can run again: a finished response's disconnect cancels nothing


class EventStream(Stream):
    """A ``text/event-stream`` response: Litestar's ``Stream``, sent without its per-response anyio task
    group and cancel scope (8 % of the gateway's instructions for a streamed answer of 8 tokens)."""

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers})

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        response.__class__ = _EventStreamBody  # same slots; only send_body differs
        return response


async def stream_response(svc: Services, prepared: Prepared, events: Events, options: StreamOptions | None,
                          return_token_ids: bool) -> EventStream:
    """The SSE response for a prepared request. The first delta is awaited before answering, so an
    engine error that comes before any output still gets its own HTTP status."""
    include_usage = bool(options and options.include_usage)
    for request in prepared.engine_requests:
        request.usage_read = include_usage
    deltas = generate(svc, prepared)
    first = await anext(deltas)
    body = events(prepared, prepend(first, deltas), include_usage=include_usage, return_token_ids=return_token_ids)
    return EventStream(body, prepared.permit.headers)
