"""``POST /v1/responses`` put together: convert, run on the chat pipeline, convert back, store.

    turn = await start(store, req, caller)        # previous_response_id read, request converted (400s)
    response, headers = await complete(...)       # not streamed: complete_chat
    body, headers = await stream(...)             # streamed: prepare_chat + generate + chat_chunks → events
    response = await background.submit(...)       # background: a job (see background.py)

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

from vlm_gateway.complete import Headers, complete_chat
from vlm_gateway.engines import EngineDelta
from vlm_gateway.errors import ContextLengthExceeded, InvalidRequest
from vlm_gateway.limits.rate import Caller
from vlm_gateway.pipeline import Prepared, Services, generate, prepare_chat
from vlm_gateway.responses_api.convert import Converted, renamed, to_chat, without_oldest_turn
from vlm_gateway.responses_api.events import response_events
from vlm_gateway.responses_api.output import base_response, finished
from vlm_gateway.responses_api.store import ResponseStore, StoredResponse
from vlm_gateway.schemas.openai import ChatCompletion
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
    previous = await store.previous(req.previous_response_id, caller) if req.previous_response_id else []
    return Turn(to_chat(req, previous), base_response(req))


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


async def complete(svc: Services, store: ResponseStore, turn: Turn, caller: Caller,
                   queued: bool = False) -> tuple[ResponseObject, Headers]:
    """``queued``: a job's request (a batch line), waiting for a slot instead of a 429."""
    async def attempt(converted: Converted, queued: bool) -> tuple[ChatCompletion, Headers]:
        with renamed(converted.params):
            return await complete_chat(svc, converted.chat, caller, queued)

    (chat, headers), _ = await fitted(turn, attempt, queued)
    response = finished(turn.response, chat)
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
