"""The arguments of OpenAI's cursor-paged lists (files, batches, a response's input items), checked once."""

from __future__ import annotations

from typing import Literal

from vlm_gateway.errors import InvalidRequest

Order = Literal["asc", "desc"]  # declared on the routes' ``order`` query parameters (the document's enum)


def check_page(limit: int, max_limit: int, order: str = "desc") -> None:
    """400 naming ``limit`` outside 1..``max_limit``, or ``order`` other than ``asc`` / ``desc``."""
    if not 1 <= limit <= max_limit:
        raise InvalidRequest(f"limit must be between 1 and {max_limit}", param="limit", code="invalid_value")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order", code="invalid_value")
