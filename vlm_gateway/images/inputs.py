"""Step 3's first half: where a request's images are, as sent (a URL, a data URI or an uploaded file's
id), each with the parameter that names it in errors, and the family's ``detail`` data as the image
loader's size limits. The pipeline loads them (``vlm_gateway.images.load``)."""

from __future__ import annotations

import msgspec

from vlm_gateway.errors import InvalidRequest
from vlm_gateway.images.load import DetailRule
from vlm_gateway.prompts.families import FamilyDetail
from vlm_gateway.schemas.openai import ChatMessage, CompletionRequest, FilePart, ImagePart, ImageUrlPart


class ImageInput(msgspec.Struct, frozen=True):
    """One image of a request as sent: a URL (https or data URI) or an uploaded file's id."""

    url: str | None
    file_id: str | None
    detail: str
    param: str  # where it was, e.g. "messages[0].content[1].image_url"


def _image_input(url: str | None, file_id: str | None, detail: str, param: str) -> ImageInput:
    if (url is None) == (file_id is None):
        raise InvalidRequest("an image needs a url or a file_id (one of them)", param=param)
    return ImageInput(url, file_id, "high" if detail == "original" else detail, param)


def chat_image_sources(messages: list[ChatMessage]) -> list[ImageInput]:
    sources = []
    for i, message in enumerate(messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            param = f"messages[{i}].content[{j}]"
            if isinstance(part, ImageUrlPart):
                sources.append(_image_input(part.image_url.url, part.image_url.file_id, part.image_url.detail,
                                            param + ".image_url"))
            elif isinstance(part, ImagePart):
                sources.append(_image_input(part.url or part.image, None, part.detail, param))
            elif isinstance(part, FilePart):
                sources.append(_image_input(part.file.file_data, part.file.file_id, "auto", param + ".file"))
    return sources


def completion_image_sources(req: CompletionRequest) -> list[ImageInput]:
    images = req.images if req.images is not None else (req.extra_body.images if req.extra_body else None)
    sources = []
    for i, image in enumerate(images or []):
        if isinstance(image, str):
            sources.append(ImageInput(image, None, "auto", f"images[{i}]"))
        else:
            sources.append(_image_input(image.url, None, image.detail, f"images[{i}]"))
    return sources


def detail_rule(detail: FamilyDetail) -> DetailRule:
    """The family's `detail` data (templates/families.toml) as the image loader's size limits."""
    return DetailRule(low_max_side=detail.low_max_side, high_max_pixels=detail.max_pixels or None,
                      min_pixels=detail.min_pixels or None, auto=detail.auto)
