"""``GET /v1/responses/{id}/input_items``: the items a stored response was given, as OpenAI lists them.

A record keeps its conversation as chat messages (``StoredResponse.history``: the turns of
``previous_response_id`` with their outputs, then this request's input; instructions are not items),
so the items are read back from those: a user, system or developer message as a message of input_*
parts, an assistant turn as its message (output_text) and its function_call items, a tool message as a
function_call_output. Ids are the response's id and the item's position, so a cursor (``after``) finds the
same item on every read.
"""

from __future__ import annotations

from vlm_gateway.errors import InvalidRequest, NotFound
from vlm_gateway.paging import check_page
from vlm_gateway.schemas.openai import ChatMessage, ContentPart, FilePart, ImageUrlPart
from vlm_gateway.schemas.responses import (
    InputFile,
    InputImage,
    InputItemList,
    InputText,
    ListedContent,
    ListedFunctionCall,
    ListedFunctionCallOutput,
    ListedItem,
    ListedMessage,
    OutputText,
)

MAX_LIST = 100
IMAGE_URLS = "message.input_image.image_url"  # the ``include`` value that lists input images' URLs
INCLUDABLE = (IMAGE_URLS, "message.output_text.logprobs")  # the second: accepted, stored outputs keep none


def _parts(content: str | list[ContentPart] | None, image_urls: bool) -> list[ListedContent]:
    if content is None:
        return []
    if isinstance(content, str):
        return [InputText(content)]
    out: list[ListedContent] = []
    for part in content:
        if isinstance(part, ImageUrlPart):
            image = part.image_url
            out.append(InputImage(image.url if image_urls else None, image.file_id, image.detail))
        elif isinstance(part, FilePart):
            out.append(InputFile(part.file.file_id, part.file.file_data, part.file.filename))
        else:  # text (the Hugging Face image form never reaches a stored conversation)
            out.append(InputText(getattr(part, "text", "")))
    return out


def listed_items(response_id: str, history: list[ChatMessage], image_urls: bool = False) -> list[ListedItem]:
    """The items of ``history``, oldest first; ``image_urls``: input images keep their URL (else null)."""
    items: list[ListedItem] = []
    stem = response_id.removeprefix("resp_")

    def next_id(prefix: str) -> str:
        return f"{prefix}_{stem}{len(items):04d}"

    for message in history:
        if message.role == "tool":
            output = message.content if isinstance(message.content, str) else _parts(message.content, image_urls)
            items.append(ListedFunctionCallOutput(id=next_id("fco"), call_id=message.tool_call_id or "",
                                                  output=output))  # type: ignore[arg-type]
        elif message.role == "assistant":
            text = message.content if isinstance(message.content, str) else "".join(
                getattr(p, "text", "") for p in message.content or [])
            if text:
                items.append(ListedMessage(id=next_id("msg"), role="assistant", content=[OutputText(text)]))
            for call in message.tool_calls or []:
                items.append(ListedFunctionCall(id=next_id("fc"), call_id=call.id, name=call.function.name,
                                                arguments=call.function.arguments))
        else:
            items.append(ListedMessage(id=next_id("msg"), role=message.role,
                                       content=_parts(message.content, image_urls)))
    return items


def page(items: list[ListedItem], *, after: str | None, limit: int, order: str) -> InputItemList:
    """OpenAI's cursor page: newest first unless ``order="asc"``, starting after the item ``after``."""
    check_page(limit, MAX_LIST, order)
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        at = next((i for i, item in enumerate(ordered) if item.id == after), None)
        if at is None:
            raise NotFound(f"No input item found with id '{after[:64]}'.", param="after")
        ordered = ordered[at + 1:]
    data = ordered[:limit]
    return InputItemList(data=data, has_more=len(ordered) > limit, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None)


def check_include(include: list[str]) -> bool:
    """Whether input images' URLs are asked for; 400 naming ``include`` for a value this does not know."""
    for value in include:
        if value not in INCLUDABLE:
            raise InvalidRequest(f"include value {value!r} is not supported here; supported: "
                                 f"{', '.join(INCLUDABLE)}", param="include", code="invalid_value")
    return IMAGE_URLS in include
