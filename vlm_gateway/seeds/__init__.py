"""The seed services' own request shapes, translated to and from the one chat pipeline.

Each adapter turns its body into a ``ChatCompletionRequest`` and the pipeline's ``ChatCompletion``
back into its own response; there is no second code path.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Container
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import msgspec

from vlm_gateway.errors import InvalidRequest, params_renamed
from vlm_gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    ImageUrl,
    ImageUrlPart,
    JsonSchemaFormat,
    JsonSchemaSpec,
    TextPart,
)
from vlm_gateway.schemas.seeds import (
    FalRequest,
    FalResponse,
    VisionChoice,
    VisionCompletion,
    VisionMessage,
    VisionRequest,
    VlmRunRequest,
    VlmRunResponse,
    VlmRunUsage,
)


def _one_image_chat(model: str, image_url: str, prompt: str, **sampling) -> ChatCompletionRequest:
    content = [ImageUrlPart(ImageUrl(image_url)), TextPart(prompt)]
    return ChatCompletionRequest(model=model, messages=[ChatMessage("user", content)], **sampling)


_PART = re.compile(r"messages\[0\]\.content\[(\d+)\]")


@dataclass(frozen=True)
class SeedFields:
    """Where an adapter put a seed body's fields in its chat request (one user message: the images, then
    the prompt), so that an error the pipeline raises names the field the client sent, not the chat's."""

    image: str  # the field of the images: one (``image_url``) or a list (``images``: ``images[k]``)
    prompt: str
    whole: str  # what a param naming the whole conversation (``messages``: too long, too many images) becomes
    listed: bool = False

    def name(self, param: str, images: int) -> str:
        if (part := _PART.match(param)) is not None:
            k = int(part[1])
            if k >= images:
                return self.prompt
            return f"{self.image}[{k}]" if self.listed else self.image
        return self.whole if re.match(r"messages\b", param) else param


VISION_FIELDS = FAL_FIELDS = SeedFields(image="image_url", prompt="prompt", whole="prompt")
VLMRUN_FIELDS = SeedFields(image="images", prompt="config.prompt", whole="images", listed=True)


def errors_named_for(fields: SeedFields, images: int = 1) -> AbstractContextManager[None]:
    """Errors raised inside name the seed body's own fields."""
    return params_renamed(lambda param: fields.name(param, images))


# --- FastVLM ------------------------------------------------------------------------------------

FASTVLM_MODEL = "fastvlm-1.5b"  # the FastVLM service's own default model


def vision_to_chat(req: VisionRequest, served: Container[str], first: str) -> ChatCompletionRequest:
    """``model`` left out: the FastVLM service's default where a model is named so, else ``first``."""
    model = req.model or (FASTVLM_MODEL if FASTVLM_MODEL in served else first)
    return _one_image_chat(model, req.image_url, req.prompt, max_tokens=req.max_tokens,
                           temperature=req.temperature)


def vision_response(out: ChatCompletion) -> VisionCompletion:
    return VisionCompletion(
        id=out.id, created=out.created, model=out.model, usage=out.usage,
        choices=[VisionChoice(c.index, VisionMessage("assistant", c.message.content or ""), c.finish_reason)
                 for c in out.choices])


# --- fal LLaVA ----------------------------------------------------------------------------------

def fal_to_chat(model: str, req: FalRequest) -> ChatCompletionRequest:
    return _one_image_chat(model, req.image_url, req.prompt, max_tokens=req.max_tokens,
                           temperature=req.temperature, top_p=req.top_p)


def fal_response(out: ChatCompletion) -> FalResponse:
    return FalResponse(output=out.choices[0].message.content or "", partial=False)


# --- vlm.run ------------------------------------------------------------------------------------

SERVED_MEDIA = frozenset({"image"})  # what POST /v1/image/generate takes


class Domain(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A preset from domains.toml. ``media`` is what the domain reads; one not in ``SERVED_MEDIA`` (video)
    is a 400 naming ``domain``, not an unknown domain."""

    prompt: str
    schema: str
    media: str = "image"


@cache
def domains() -> dict[str, Domain]:
    raw = tomllib.loads((Path(__file__).parent / "domains.toml").read_text())
    return {name: msgspec.convert(d, Domain) for name, d in raw.items()}


def served_domains() -> list[str]:
    return sorted(name for name, d in domains().items() if d.media in SERVED_MEDIA)


_DETAIL = {"lo": "low", "hi": "high"}  # the vlmrun SDK's names


def vlmrun_to_chat(req: VlmRunRequest, model: str) -> ChatCompletionRequest:
    preset = domains().get(req.domain)
    if preset is not None and preset.media not in SERVED_MEDIA:
        raise InvalidRequest(f"domain {req.domain!r} takes {preset.media} input, which this gateway does not "
                             f"support (yet); image domains: {', '.join(served_domains())}", param="domain")
    if preset is None and (req.config.prompt is None or req.config.json_schema is None):
        raise InvalidRequest(f"unknown domain {req.domain!r}; known: {', '.join(served_domains())} "
                             "(or give config.prompt and config.json_schema)", param="domain")
    if req.config.prompt is not None and not req.config.prompt.strip():
        raise InvalidRequest("config.prompt is empty: leave it out for the domain's own", param="config.prompt")
    if req.config.json_schema is not None and not req.config.json_schema:
        raise InvalidRequest("config.json_schema is empty: leave it out for the domain's own",
                             param="config.json_schema")
    prompt = req.config.prompt if req.config.prompt is not None else preset.prompt  # type: ignore[union-attr]
    schema = req.config.json_schema if req.config.json_schema is not None else json.loads(preset.schema)  # type: ignore[union-attr]
    detail = _DETAIL.get(req.config.detail, req.config.detail)
    content = [*(ImageUrlPart(ImageUrl(url, detail)) for url in req.images), TextPart(prompt)]  # type: ignore[arg-type]
    return ChatCompletionRequest(
        model=model, messages=[ChatMessage("user", content)],
        max_tokens=req.config.max_tokens, temperature=req.config.temperature,
        response_format=JsonSchemaFormat(JsonSchemaSpec(name=req.domain.replace(".", "_"), schema=schema)),
    )


NOTHING_YET = VlmRunUsage(elements_processed=0, credits_used=0)  # a job's usage until it completes


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def vlmrun_response(req: VlmRunRequest, request_id: str, created_at: str, out: ChatCompletion) -> VlmRunResponse:
    text = out.choices[0].message.content or ""
    try:
        response = json.loads(text)
    except ValueError:
        response = text  # the model stopped before the JSON closed (max_tokens)
    return VlmRunResponse(
        id=request_id, status="completed", created_at=created_at, completed_at=now_iso(), domain=req.domain,
        response=response, metadata=req.metadata,
        usage=VlmRunUsage(elements_processed=len(req.images), credits_used=len(req.images)))
