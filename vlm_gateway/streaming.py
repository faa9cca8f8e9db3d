"""Step 7 for streamed requests: engine deltas → OpenAI server-sent events.

Each event is ``data: {json}\\n\\n``; the stream ends with ``data: [DONE]\\n\\n``. An error after the
first byte can no longer change the status code, so it is sent as an OpenAI error event. Closing
the stream early (client gone) closes the engine iterator, which aborts the engine request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import msgspec
from litestar.response import Stream
from msgspec import UNSET

from vlm_gateway.engines import EngineDelta
from vlm_gateway.errors import GatewayError
from vlm_gateway.pipeline import Prepared, Services, generate
from vlm_gateway.responses import finish_reason
from vlm_gateway.schemas.openai import (
    ChatCompletionChunk,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    StreamOptions,
)

_ENCODER = msgspec.json.Encoder()
DONE = b"data: [DONE]\n\n"


def sse(body: msgspec.Struct) -> bytes:
    return b"data: " + _ENCODER.encode(body) + b"\n\n"


async def prepend(first: EngineDelta, rest: AsyncIterator[EngineDelta]) -> AsyncIterator[EngineDelta]:
    yield first
    async for delta in rest:
        yield delta


async def _events(deltas: AsyncIterator[EngineDelta], make, prepared: Prepared, include_usage: bool,
                  return_token_ids: bool, opening: list[bytes]) -> AsyncIterator[bytes]:
    ids_sent = not return_token_ids
    try:
        for event in opening:
            yield event
        async for delta in deltas:
            ids = delta.prompt_token_ids if not ids_sent else None
            ids_sent = ids_sent or ids is not None
            if delta.text or delta.finish_reason or ids:
                yield sse(make(delta, ids))
        if include_usage:
            yield sse(make(None, None, prepared.tally.usage()))
    except GatewayError as exc:
        yield sse(exc.body())
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
    yield DONE


def chat_events(prepared: Prepared, deltas: AsyncIterator[EngineDelta], *, include_usage: bool,
                return_token_ids: bool) -> AsyncIterator[bytes]:
    def make(delta: EngineDelta | None, ids=None, usage=None) -> ChatCompletionChunk:
        choices = [] if delta is None else [ChunkChoice(
            delta.index, Delta(content=delta.text) if delta.text else Delta(),
            finish_reason(delta.finish_reason))]
        return ChatCompletionChunk(prepared.response_id, prepared.created, prepared.model_name, choices,
                                   usage=usage or UNSET, prompt_token_ids=ids or UNSET)

    opening = [sse(ChatCompletionChunk(prepared.response_id, prepared.created, prepared.model_name,
                                       [ChunkChoice(i, Delta(role="assistant", content=""))]))
               for i in range(prepared.engine_request.sampling.n)]
    return _events(deltas, make, prepared, include_usage, return_token_ids, opening)


def completion_events(prepared: Prepared, deltas: AsyncIterator[EngineDelta], *, include_usage: bool,
                      return_token_ids: bool) -> AsyncIterator[bytes]:
    def make(delta: EngineDelta | None, ids=None, usage=None) -> Completion:
        choices = [] if delta is None else [CompletionChoice(
            delta.index, delta.text, finish_reason(delta.finish_reason))]
        return Completion(prepared.response_id, prepared.created, prepared.model_name, choices,
                          usage=usage or UNSET, prompt_token_ids=ids or UNSET)

    return _events(deltas, make, prepared, include_usage, return_token_ids, [])


Events = Callable[..., AsyncIterator[bytes]]


async def stream_response(svc: Services, prepared: Prepared, events: Events, options: StreamOptions | None,
                          return_token_ids: bool) -> Stream:
    """The SSE response for a prepared request. The first delta is awaited before answering, so an
    engine error that comes before any output still gets its own HTTP status."""
    deltas = generate(svc, prepared)
    first = await anext(deltas)
    body = events(prepared, prepend(first, deltas), include_usage=bool(options and options.include_usage),
                  return_token_ids=return_token_ids)
    headers = {"Cache-Control": "no-cache", **prepared.permit.headers}
    return Stream(body, media_type="text/event-stream", headers=headers)
