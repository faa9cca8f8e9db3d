"""The API-key check: every route except those marked ``opt={"public": True}`` (``/health``,
``/metrics``) needs ``Authorization: Bearer <key>`` once keys exist. Refused: 401 in OpenAI's error
shape (raised here, rendered by the app's error handler). The caller it finds is the request's
``caller`` (``vlm_gateway.api.caller``).

An ASGI middleware rather than a Litestar guard: a guard is handed a copy of its route handler on every
request, which cost as much as the check itself."""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send

AUTHORIZATION = b"authorization"


def require_api_key(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["route_handler"].opt.get("public"):
            header = next((value for name, value in scope["headers"] if name == AUTHORIZATION), None)
            limiter = scope["litestar_app"].state.services.limiter
            caller = await limiter.authenticate(None if header is None else header.decode("latin-1"))
            scope.setdefault("state", {})["caller"] = caller  # type: ignore[typeddict-unknown-key]
        await app(scope, receive, send)

    return middleware
