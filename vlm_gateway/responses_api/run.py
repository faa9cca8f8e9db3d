"""``POST /v1/responses`` put together: convert, run on the chat pipeline, convert back, store.

    turn = await start(store, req, caller)        # previous_response_id read, request converted (400s)
    response, headers = await complete(...)       # not streamed: the same, its events dropped (``whole``)
    body, headers = await stream(...)             # streamed: prepare_chat + generate + chat_chunks → events
    response = await background.submit(...)       # background: a job (see background.py)

Both build the output with ``events.OutputBuilder`` from the engine's streamed pieces (the unstreamed
one too: a whole answer would no longer say whether a call came before the text or after it), so
they list the same items in the same order and agree on which one a token limit cut.

Errors are the pipeline's own, their ``param`` renamed to the Responses field they came from.

``truncation: "auto"``: while the pipeline refuses the conversation as too long for the model's context
(its own count, or the engine's once it has expanded the images), the oldest turn is dropped and the
request tried again (``convert.without_oldest_turn``); the last turn alone that does not fit stays the
400. A retry waits for a slot as a queued job does and does not count against requests/min again: the
request paid for itself on its first try. The stored conversation keeps every turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import msgspec

from vlm_gateway.complete import Headers
from vlm_gateway.engines import EngineDelta
from vlm_gateway.errors import ContextLengthExceeded, InvalidRequest
from vlm_gateway.limits.rate import Caller
from vlm_gateway.pipeline import Prepared, Services, generate, prepare_chat
from vlm_gateway.responses_api.convert import Converted, renamed, to_chat, without_oldest_turn
from vlm_gateway.responses_api.events import OutputBuilder, response_events
from vlm_gateway.responses_api.output import base_response
from vlm_gateway.responses_api.store import ResponseStore, StoredResponse
from vlm_gateway.schemas.responses import ResponseObject, ResponsesRequest
from vlm_gateway.streaming import chat_chunks, prepend

T = TypeVar("T")


class Turn(msgspec.Struct):
    """One request, converted: the chat request to run and the response it starts as."""

    converted: Converted
    response: ResponseObject  # status in_progress, no output yet


async def start(store: ResponseStore, req: ResponsesRequest, caller: Caller) -> Turn:
    if req.background and req.stream:
        raise InvalidRequest("a background response is not streamed here: send stream false and poll "
                             "GET /v1/responses/{id}", param="stream")
    if req.previous_response_id is None:
        return Turn(to_chat(req, []), base_response(req))
    previous = await store.previous(req.previous_response_id, caller)
    return Turn(to_chat(req, previous.conversation, previous.call_ids), base_response(req))


async def _save(store: ResponseStore, turn: Turn, response: ResponseObject, caller: Caller) -> None:
    if response.store:
        await store.save(StoredResponse(caller.key_id, response, turn.converted.history))


async def fitted(turn: Turn, attempt: Callable[[Converted, bool], Awaitable[T]],
                  queued: bool = False) -> tuple[T, Converted]:
    """``attempt`` of the turn's request, tried again without its oldest turn while it does not fit the
    model's context and truncation is "auto"; its result and the request it succeeded with."""
    converted = turn.converted
    while True:
        try:
            return await attempt(converted, queued), converted
        except ContextLengthExceeded:
            shorter = without_oldest_turn(converted) if turn.response.truncation == "auto" else None
            if shorter is None:
                raise
            converted, queued = shorter, True


async def whole(svc: Services, converted: Converted, base: ResponseObject, caller: Caller,
                queued: bool) -> tuple[ResponseObject, Headers]:
    """The finished response to ``converted`` (``base`` with its output), built as a stream builds it."""
    with renamed(converted.params):
        prepared = await prepare_chat(svc, converted.chat, caller, queued)
        out = OutputBuilder(base)
        async for chunk in chat_chunks(prepared, generate(svc, prepared), include_usage=True):
            out.take(chunk)
        out.finish()
    return out.response(), prepared.permit.headers


async def complete(svc: Services, store: ResponseStore, turn: Turn, caller: Caller,
                   queued: bool = False) -> tuple[ResponseObject, Headers]:
    """``queued``: a job's request (a batch line), waiting for a slot instead of a 429."""
    async def attempt(converted: Converted, queued: bool) -> tuple[ResponseObject, Headers]:
        return await whole(svc, converted, turn.response, caller, queued)

    (response, headers), _ = await fitted(turn, attempt, queued)
    await _save(store, turn, response, caller)
    return response, headers


async def _empty() -> AsyncIterator[EngineDelta]:
    return
    yield  # an async generator that yields nothing


async def stream(svc: Services, store: ResponseStore, turn: Turn,
                 caller: Caller) -> tuple[AsyncIterator[bytes], Headers]:
    """The SSE body. The first engine delta is awaited before answering (as for chat), so a failure
    before any output still gets its own HTTP status; later ones end the stream with response.failed."""
    async def attempt(converted: Converted, queued: bool) -> tuple[Prepared, AsyncIterator[EngineDelta]]:
        with renamed(converted.params):
            prepared = await prepare_chat(svc, converted.chat, caller, queued)
            deltas = generate(svc, prepared)
            try:
                return prepared, prepend(await anext(deltas), deltas)
            except StopAsyncIteration:
                return prepared, _empty()

    (prepared, deltas), converted = await fitted(turn, attempt)
    chunks = chat_chunks(prepared, deltas, include_usage=True)

    async def done(response: ResponseObject) -> None:
        await _save(store, turn, response, caller)

    return response_events(turn.response, chunks, converted.params, done), prepared.permit.headers
