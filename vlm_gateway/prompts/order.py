"""Request-level reshaping of messages before rendering, driven by family data.

``strings_to_parts``: for families whose template reads list content only (LLaVA-1.5), a string
content becomes one text part, so clients that send strings are not silently dropped.

Moving images ahead of text, for families whose models read images first.

Llama 3.2 Vision degrades when text precedes an image, so for families with ``images_before_text``
(a model setting can override it) the request pipeline calls ``reorder_images_first`` before
rendering. ``render_chat`` itself never reorders: it renders the conversation it is given.
"""

from __future__ import annotations

import msgspec

from vlm_gateway.prompts.convert import IMAGE_PARTS
from vlm_gateway.schemas.openai import ChatMessage, TextPart


def reorder_images_first(messages: list[ChatMessage]) -> list[ChatMessage]:
    """A copy of ``messages`` where each message's image parts come before its other parts, every
    group keeping its order. String content and messages already in that order are kept as they are."""
    out = []
    for message in messages:
        content = message.content
        if isinstance(content, list):
            images = [part for part in content if isinstance(part, IMAGE_PARTS)]
            others = [part for part in content if not isinstance(part, IMAGE_PARTS)]
            if images + others != content:
                message = msgspec.structs.replace(message, content=images + others)
        out.append(message)
    return out


def strings_to_parts(messages: list[ChatMessage]) -> list[ChatMessage]:
    """A copy of ``messages`` where string content is a list holding one text part."""
    return [msgspec.structs.replace(m, content=[TextPart(m.content)]) if isinstance(m.content, str) else m
            for m in messages]
