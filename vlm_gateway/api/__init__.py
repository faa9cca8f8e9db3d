"""Thin route modules: decode the body into schemas, call the pipeline, return its result."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from litestar.connection import ASGIConnection
from litestar.openapi.datastructures import ResponseSpec

from vlm_gateway.errors import ClientGone, ErrorEnvelope, SeedErrorBody
from vlm_gateway.limits import Caller
from vlm_gateway.pipeline import Services

_ERROR_STATUSES = {
    400: "The request is invalid; `param` names the field.",
    401: "No API key, or an unknown one.",
    403: "The key may not use this model or route.",
    404: "Unknown model, or an id this key does not own.",
    413: "The body or an image is larger than allowed.",
    429: "A rate, token or concurrency limit of the key was reached (see Retry-After).",
    500: "An error of the gateway's own.",
    502: "The engine failed.",
    503: "No engine is ready (see Retry-After).",
    504: "The request ran past its timeout.",
}


def error_responses(seed: bool = False) -> dict[int, ResponseSpec]:
    """The documented error responses of a route: OpenAI's ``{"error": {...}}`` envelope, or the seed
    services' ``{"error", "status_code", "timestamp"}`` on their own routes. Rendered by
    ``vlm_gateway.errors.error_response`` either way."""
    body = SeedErrorBody if seed else ErrorEnvelope
    return {status: ResponseSpec(body, description=text, generate_examples=False)
            for status, text in _ERROR_STATUSES.items()}


ERRORS = error_responses()
SEED_ERRORS = error_responses(seed=True)


def success(body: object, description: str, media_type: str = "application/json") -> ResponseSpec:
    """A success response documented apart from the handler's return annotation (routes that answer
    JSON or, with ``stream: true``, server-sent events)."""
    return ResponseSpec(body, description=description, media_type=media_type, generate_examples=False)


def services(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    return connection.app.state.services


def caller(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The API key the request authenticated with (set by ``vlm_gateway.api.auth``); ``ANONYMOUS``
    without keys."""
    from vlm_gateway.limits.rate import ANONYMOUS

    return connection.state.get("caller") or ANONYMOUS


T = TypeVar("T")


async def while_connected(connection: ASGIConnection[Any, Any, Any, Any], work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, or, when the client closes its connection first, ``work`` cancelled (its engine
    request aborted, its slot freed) and ``ClientGone``: a client that gave up keeps no engine busy. For
    the work before an answer's first byte (a streamed answer's client leaving later is seen by its
    stream). One watching task; ``work`` runs in the handler's own."""
    handler, state = asyncio.current_task(), {"running": True, "left": False}

    def gone(watcher: asyncio.Future[None]) -> None:
        if state["running"] and not watcher.cancelled() and watcher.exception() is None:
            state["left"] = True
            handler.cancel()  # type: ignore[union-attr]

    watcher = asyncio.ensure_future(_disconnect(connection))
    watcher.add_done_callback(gone)
    try:
        return await work
    except asyncio.CancelledError:
        if state["left"] and handler.uncancel() == 0:  # type: ignore[union-attr]
            raise ClientGone("the client closed the connection before the answer") from None
        raise
    finally:
        state["running"] = False
        watcher.cancel()


async def _disconnect(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Returns when the client has gone (the body is read: the server's next message is the disconnect)."""
    while (await connection.receive())["type"] != "http.disconnect":
        pass
