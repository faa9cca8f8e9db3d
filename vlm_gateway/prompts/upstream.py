"""The chat as an engine that renders prompts itself receives it (the OpenAI pass-through kind).

The gateway still owns everything before the prompt: the messages as the family wants them (string
content as parts, images first), and the images it loaded, checked and sized by ``detail``, sent as the
data URIs it made rather than the client's URLs (the upstream never fetches anything). Text parts stay
text; every image part, in whichever form the client sent it (``image_url``, ``image``, ``file``),
becomes ``image_url``.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from vlm_gateway.engines import ChatInput
from vlm_gateway.schemas.openai import ChatMessage, TextPart, Tool


def upstream_chat(messages: Sequence[ChatMessage], tools: Sequence[Tool] | None, images: Sequence[str]) -> ChatInput:
    """``images``: the loaded images' URLs, in the order the messages' image parts come."""
    urls = iter(images)
    out = []
    for message in messages:
        wire = {k: v for k, v in msgspec.to_builtins(message).items() if v is not None}  # no "name": null
        if isinstance(message.content, list):
            wire["content"] = [{"type": "text", "text": part.text} if isinstance(part, TextPart)
                               else {"type": "image_url", "image_url": {"url": next(urls)}}
                               for part in message.content]
        out.append(wire)
    return ChatInput(out, msgspec.to_builtins(list(tools)) if tools else None)
