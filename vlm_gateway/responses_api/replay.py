"""``GET /v1/responses/{id}?stream=true``: a stored response as the events of its stream, how a client
reconnects to a background response (``client.responses.stream(response_id=...)``) or to a stream it lost.

Nothing is kept of a stream but its response, so the events are rebuilt from it (``events.replayed``:
the same builder and event shapes as the live stream, the items' own ids, the whole text of each item in
one delta), numbered from 0 by ``sequence_number``; ``starting_after=N`` leaves out those up to N. A
response still queued or in progress (background) gets its first two events at once, then the rest once
it has finished: its record is read every ``responses.stream_poll_s`` until then, for as long as the
response can live (``responses.ttl_s`` from its creation). A response deleted (or expired) meanwhile
ends the stream with ``response.failed`` and its error: the status has long been sent.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

from vlm_gateway.errors import GatewayError
from vlm_gateway.limits.rate import Caller
from vlm_gateway.responses_api.events import opening, replayed, sse, started
from vlm_gateway.responses_api.output import failed
from vlm_gateway.responses_api.store import UNFINISHED, ResponseStore, not_found
from vlm_gateway.schemas.responses import ResponseFailed, ResponseObject, StreamEvent


async def replay(store: ResponseStore, response_id: str, caller: Caller,
                 starting_after: int | None) -> AsyncIterator[bytes]:
    """The SSE body; an unknown response is a 404 now, before any byte is sent."""
    response = (await store.get(response_id, caller)).response
    return _body(store, response, caller, -1 if starting_after is None else starting_after)


async def _body(store: ResponseStore, response: ResponseObject, caller: Caller, after: int) -> AsyncIterator[bytes]:
    numbers = itertools.count()

    def numbered(events: list[StreamEvent]) -> list[bytes]:
        return [sse(event, n) for event in events if (n := next(numbers)) > after]

    for line in numbered(opening(response)):
        yield line
    try:
        response = await _finished(store, response, caller)
    except GatewayError as exc:  # gone while it ran: the stream still ends with an event saying why
        response = failed(started(response), exc)
        for line in numbered([ResponseFailed(response=response)]):
            yield line
        return
    for line in numbered(replayed(response)):
        yield line


async def _finished(store: ResponseStore, response: ResponseObject, caller: Caller) -> ResponseObject:
    """``response`` once it is no longer queued or in progress (its store record read again and again)."""
    deadline = response.created_at + store.settings.ttl_s
    while response.status in UNFINISHED:
        if time.time() > deadline:
            raise not_found(response.id)
        await asyncio.sleep(store.settings.stream_poll_s)
        response = (await store.get(response.id, caller)).response
    return response

