"""Thin route modules: decode the body into schemas, call the pipeline, return its result."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection

from vlm_gateway.limits import Caller
from vlm_gateway.pipeline import Services


def services(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    return connection.app.state.services


def caller(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The API key the request authenticated with (set by ``vlm_gateway.api.auth``); ``ANONYMOUS``
    without keys."""
    from vlm_gateway.limits.rate import ANONYMOUS

    return connection.state.get("caller") or ANONYMOUS
