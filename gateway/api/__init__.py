"""Thin route modules: decode the body into schemas, call the pipeline, return its result."""

from __future__ import annotations

from typing import Any

from litestar import Request

from gateway.pipeline import Services


def services(request: Request[Any, Any, Any]) -> Services:
    return request.app.state.services
