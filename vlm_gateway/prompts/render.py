"""Render a chat conversation into one model family's prompt text.

``render_chat`` is the path every chat request takes (and the ``render`` CLI, and the conformance
tests): request messages → template variables (``convert``) → for ``marker_rule = "text"`` families,
image markers written into the text → the family's template in ``templates/`` → prompt text. It then
checks that the prompt holds one placeholder per image, so the engine never sees a mismatch.

Tools (``tools=``) are rendered by the family's template in its own syntax (``Family.tools``, passed to
the template as ``tool_format``); assistant ``tool_calls`` and ``tool`` messages are rendered whether or
not tools are offered, so a history with calls renders the same under ``tool_choice="none"``.
"""

from __future__ import annotations

import math
from datetime import datetime

import msgspec

from vlm_gateway.cache import LRUCache
from vlm_gateway.errors import InvalidRequest
from vlm_gateway.prompts.convert import (
    check_text,
    count_images,
    template_tools,
    to_template_messages,
    write_markers_into_text,
)
from vlm_gateway.prompts.environment import get_template, strftime_at
from vlm_gateway.prompts.families import Family
from vlm_gateway.prompts.markers import count_placeholders
from vlm_gateway.prompts.order import reorder_images_first
from vlm_gateway.schemas.openai import ChatMessage, Tool

__all__ = ["RenderedPrompt", "render_chat", "reorder_images_first"]


class RenderedPrompt(msgspec.Struct, frozen=True):
    """The prompt text and the number of images it places, in order of appearance."""

    text: str
    image_count: int


class _Rendered(msgspec.Struct, frozen=True):
    prompt: RenderedPrompt
    dates: tuple[tuple[str, str], ...]  # what each ``strftime_now(format)`` call printed


_KEY = msgspec.msgpack.Encoder()  # floats as floats: NaN and null stay apart
MAX_KEY_BYTES = 16 * 1024  # longer conversations are rendered every time (the cache stays under ~32 MiB)
RENDERED: LRUCache[tuple[bytes, datetime | None], _Rendered] = LRUCache(
    1024, math.inf, sizeof=lambda r: len(r.prompt.text))
"""Recent renderings by their input (family, template variables, tools, generation prompt, ``now``);
for the event loop's thread only."""


def render_chat(
    family: Family,
    messages: list[ChatMessage],
    *,
    tools: list[Tool] | None = None,
    add_generation_prompt: bool = True,
    now: datetime | None = None,
) -> RenderedPrompt:
    """The family's prompt for ``messages`` offering ``tools`` (None or empty: none); ``now`` is the
    date templates print (default: today).

    Raises ``PromptRefused`` when the template rejects the conversation and ``InvalidRequest`` when
    the messages are empty, text (tool specs and call arguments included) holds an image
    placeholder, a tool call's arguments are no JSON object, or the template leaves an image out.

    A prompt is rendered once per distinct input: the same template variables (images are bare
    ``{"type": "image"}`` parts, so the same question about another image is the same input) are
    answered from ``RENDERED`` while every date the template printed still reads the same.
    """
    if not messages:
        raise InvalidRequest("messages must hold at least one message", param="messages")
    variables = to_template_messages(messages)
    tool_variables = template_tools(tools)
    key = (_KEY.encode((family.directory, family.name, add_generation_prompt, variables, tool_variables)), now)
    clock = strftime_at(now)
    done = RENDERED.get(key)
    if done is not None and all(clock(fmt) == printed for fmt, printed in done.dates):
        return done.prompt
    check_text(family, messages, tools)
    image_count = count_images(messages)
    if family.marker_rule == "text":
        variables = write_markers_into_text(variables, family)
    dates: list[tuple[str, str]] = []

    def strftime_now(fmt: str) -> str:
        printed = clock(fmt)
        dates.append((fmt, printed))
        return printed

    text = get_template(family.template, family.directory).render(
        messages=variables,
        add_generation_prompt=add_generation_prompt,
        tools=tool_variables,
        tool_format=family.tools,
        documents=None,
        bos_token=family.bos_token,
        eos_token=family.eos_token,
        image_placeholder=family.image_placeholder,
        default_system_prompt=family.default_system_prompt,
        strftime_now=strftime_now,
    )
    placed = count_placeholders(family, text)
    if placed != image_count:
        raise InvalidRequest(
            f"the {family.name} prompt format places {placed} of the request's {image_count} images; "
            "this model takes images in user, assistant and tool messages only",
            param="messages",
        )
    prompt = RenderedPrompt(text, image_count)
    if len(key[0]) <= MAX_KEY_BYTES:
        RENDERED.put(key, _Rendered(prompt, tuple(dates)))
    return prompt
