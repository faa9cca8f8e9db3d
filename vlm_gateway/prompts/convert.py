"""Request messages → the ``messages`` variable a chat template reads.

Templates see the Hugging Face form: ``{"role", "content"}`` where content is a string or a list of
``{"type": "text", "text": ...}`` / ``{"type": "image"}`` parts. ``developer`` becomes ``system``,
``None`` content the empty string, and both image part forms (OpenAI ``image_url``, HF ``image``)
become ``{"type": "image"}``. ``write_markers_into_text`` serves families whose templates take
string content only.

Tool calling, also in Hugging Face form: an assistant message with calls gets ``tool_calls`` (the key
only when there are calls: templates test ``'tool_calls' in message``), each
``{"id", "type": "function", "function": {"name", "arguments": <object>}}`` with the JSON string the
client sent parsed; a tool message keeps role ``tool`` and its ``tool_call_id``. ``template_tools``
gives the ``tools`` variable: ``{"type": "function", "function": {"name", "description", "parameters"}}``
with unset fields left out (and ``strict``, which means nothing to a model).
"""

from __future__ import annotations

import json
from typing import Any

from vlm_gateway.errors import InvalidRequest
from vlm_gateway.prompts.families import Family
from vlm_gateway.prompts.markers import find_reserved, placeholder
from vlm_gateway.schemas.openai import ChatMessage, FilePart, ImagePart, ImageUrlPart, TextPart, Tool, ToolCall

ROLE_ALIASES = {"developer": "system"}
IMAGE_PARTS = (ImagePart, ImageUrlPart, FilePart)  # a file part is an image file
TemplateMessage = dict[str, Any]


def _part(part: TextPart | ImagePart | ImageUrlPart) -> dict[str, str]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    return {"type": "image"}


def _arguments(call: ToolCall, param: str) -> dict:
    """A call's ``arguments`` JSON string as the object templates print; empty text means ``{}``."""
    text = call.function.arguments
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"{param} is not valid JSON ({type(exc).__name__}: {exc})", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be a JSON object", param=param)
    return value


def _tool_calls(message: ChatMessage, i: int) -> list[dict]:
    if message.role != "assistant":
        raise InvalidRequest(f"messages[{i}]: only assistant messages carry tool_calls",
                             param=f"messages[{i}].tool_calls")
    return [{"id": call.id, "type": "function",
             "function": {"name": call.function.name,
                          "arguments": _arguments(call, f"messages[{i}].tool_calls[{j}].function.arguments")}}
            for j, call in enumerate(message.tool_calls or ())]


def to_template_messages(messages: list[ChatMessage]) -> list[TemplateMessage]:
    """The conversation as template variables (see the module docstring). ``InvalidRequest`` for
    tool calls that are not an assistant's or whose arguments are no JSON object."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if content is None:
            content = ""
        elif not isinstance(content, str):
            content = [_part(part) for part in content]
        variables: TemplateMessage = {"role": ROLE_ALIASES.get(message.role, message.role), "content": content}
        if message.tool_calls:
            variables["tool_calls"] = _tool_calls(message, i)
        if message.role == "tool" and message.tool_call_id is not None:
            variables["tool_call_id"] = message.tool_call_id
        out.append(variables)
    return out


def template_tools(tools: list[Tool] | None) -> list[dict] | None:
    """The ``tools`` variable, or None when there are none (templates test ``tools is not none``)."""
    if not tools:
        return None
    out = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.function.name}
        if tool.function.description is not None:
            function["description"] = tool.function.description
        if tool.function.parameters is not None:
            function["parameters"] = tool.function.parameters
        out.append({"type": "function", "function": function})
    return out


def count_images(messages: list[ChatMessage]) -> int:
    """Image parts in the conversation, both forms."""
    return sum(
        isinstance(part, IMAGE_PARTS)
        for message in messages
        if isinstance(message.content, list)
        for part in message.content
    )


def _refuse_reserved(family: Family, text: str, param: str) -> None:
    found = find_reserved(family, text)
    if found is not None:
        raise InvalidRequest(f"{param} contains {found!r}, which this model reserves for images; "
                             "send images as image_url parts", param=param)


def _as_rendered(arguments: str) -> str:
    """Call arguments as templates print them (JSON escapes such as ``\\u003c`` resolved)."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        return arguments  # to_template_messages refuses it with the reason


def check_text(family: Family, messages: list[ChatMessage], tools: list[Tool] | None = None) -> None:
    """Refuse text that holds the family's image placeholder or image token: the engine would read it
    as an image that was never sent. Images go in as image parts. Tool specs and call arguments are
    written into the prompt too, so they are checked as well."""
    for k, spec in enumerate(template_tools(tools) or ()):
        _refuse_reserved(family, json.dumps(spec, ensure_ascii=False), f"tools[{k}]")
    for i, message in enumerate(messages):
        for j, call in enumerate(message.tool_calls or ()):
            _refuse_reserved(family, call.function.name + "\n" + _as_rendered(call.function.arguments),
                             f"messages[{i}].tool_calls[{j}].function")
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
