"""Request messages → the ``messages`` variable a chat template reads.

Templates see the Hugging Face form: ``{"role", "content"}`` where content is a string or a list of
``{"type": "text", "text": ...}`` / ``{"type": "image"}`` parts. ``developer`` becomes ``system``,
``None`` content the empty string, and both image part forms (OpenAI ``image_url``, HF ``image``)
become ``{"type": "image"}``. ``write_markers_into_text`` serves families whose templates take
string content only.
"""

from __future__ import annotations

from typing import Any

from vlm_gateway.errors import InvalidRequest
from vlm_gateway.prompts.families import Family
from vlm_gateway.prompts.markers import find_reserved, placeholder
from vlm_gateway.schemas.openai import ChatMessage, FilePart, ImagePart, ImageUrlPart, TextPart

ROLE_ALIASES = {"developer": "system"}
IMAGE_PARTS = (ImagePart, ImageUrlPart, FilePart)  # a file part is an image file
TemplateMessage = dict[str, Any]


def _part(part: TextPart | ImagePart | ImageUrlPart) -> dict[str, str]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    return {"type": "image"}


def to_template_messages(messages: list[ChatMessage]) -> list[TemplateMessage]:
    """The conversation as template variables (see the module docstring)."""
    out = []
    for message in messages:
        content = message.content
        if content is None:
            content = ""
        elif not isinstance(content, str):
            content = [_part(part) for part in content]
        out.append({"role": ROLE_ALIASES.get(message.role, message.role), "content": content})
    return out


def count_images(messages: list[ChatMessage]) -> int:
    """Image parts in the conversation, both forms."""
    return sum(
        isinstance(part, IMAGE_PARTS)
        for message in messages
        if isinstance(message.content, list)
        for part in message.content
    )


def check_text(family: Family, messages: list[ChatMessage]) -> None:
    """Refuse text that holds the family's image placeholder or image token: the engine would read it
    as an image that was never sent. Images go in as image parts."""
    for i, message in enumerate(messages):
        content = message.content
        texts = [content] if isinstance(content, str) else [
            part.text for part in content or () if isinstance(part, TextPart)]
        for text in texts:
            found = find_reserved(family, text)
            if found is not None:
                raise InvalidRequest(
                    f"messages[{i}]: the text contains {found!r}, which this model reserves for images; "
                    "send images as image_url parts",
                    param=f"messages[{i}].content",
                )


def write_markers_into_text(messages: list[TemplateMessage], family: Family) -> list[TemplateMessage]:
    """For string-only templates: each message's images become placeholders numbered from 1 across
    the conversation, one per line, ahead of the message's text parts joined with ``\\n``."""
    count = 0
    out = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            markers, texts = [], []
            for part in content:
                if part["type"] == "image":
                    count += 1
                    markers.append(placeholder(family, count) + "\n")
                else:
                    texts.append(part["text"])
            message = {**message, "content": "".join(markers) + "\n".join(texts)}
        out.append(message)
    return out
