"""Which job ``kind`` a ``POST /queue/{model}`` body is. The route only calls ``JobServices.classify``;
replace :func:`default_classify` there to add kinds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlm_gateway.errors import InvalidRequest

#: ``classify(model, body) -> kind``; ``body`` is the decoded JSON object. Raise ``InvalidRequest`` to refuse.
Classifier = Callable[[str, dict[str, Any]], str]


def default_classify(model: str, body: dict[str, Any]) -> str:
    """``chat`` (has ``messages``), ``fal`` (``image_url`` + ``prompt``), ``completion`` (``prompt``)."""
    if "messages" in body:
        return "chat"
    if "prompt" in body:
        return "fal" if "image_url" in body else "completion"
    if "image_url" in body:  # fal's shape, without its prompt
        raise InvalidRequest("prompt is missing: fal's body is {\"image_url\", \"prompt\"}", param="prompt")
    raise InvalidRequest("cannot tell the kind of request: expected \"messages\" (chat) or \"prompt\"",
                         param="messages")
