"""The API-key guard: every route except those marked ``opt={"public": True}`` (``/health``) needs
``Authorization: Bearer <key>`` once keys are configured. Raises 401 in OpenAI's error shape."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from vlm_gateway.api import services


async def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    if handler.opt.get("public"):
        return
    limiter = services(connection).limiter
    connection.state.caller = await limiter.authenticate(connection.headers.get("authorization"))
