"""Request and response bodies of the seed services' own APIs (FastVLM, vlm.run, fal LLaVA)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

from vlm_gateway.schemas.openai import Detail, Usage

# --- FastVLM: POST /vision ----------------------------------------------------------------------


class VisionRequest(Struct):
    image_url: str
    prompt: str
    model: str | None = None  # None: "fastvlm-1.5b" where a model is named so, else the first served
    max_tokens: Annotated[int, Meta(ge=1)] = 200
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.7


class VisionMessage(Struct):
    role: str
    content: str


class VisionChoice(Struct):
    index: int
    message: VisionMessage
    finish_reason: str | None


class VisionCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[VisionChoice]
    usage: Usage
    object: str = "vision.completion"


class SeedError(Struct):
    """The seeds' error shape on their own routes."""

    error: str
    status_code: int
    timestamp: float


# --- fal LLaVA: POST /run/{model} ---------------------------------------------------------------


class FalRequest(Struct):
    image_url: str
    prompt: str
    max_tokens: Annotated[int, Meta(ge=1)] = 64
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.2
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0


class FalResponse(Struct):
    output: str
    partial: bool = False


# --- vlm.run: POST /v1/image/generate -----------------------------------------------------------


class VlmRunConfig(Struct):
    prompt: str | None = None
    detail: Detail | Literal["lo", "hi"] = "auto"  # (the vlmrun SDK's "lo" / "hi": low / high)
    json_schema: dict[str, Any] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] = 512  # at most: past the context, what the prompt leaves
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.0


class VlmRunRequest(Struct):
    images: Annotated[list[str], Meta(min_length=1)]
    domain: str = "image.caption"
    model: str | None = None
    config: VlmRunConfig = field(default_factory=VlmRunConfig)
    batch: bool = False
    callback_url: str | None = None
    metadata: dict[str, Any] = {}


VlmRunStatus = Literal["enqueued", "pending", "running", "completed", "failed"]


class VlmRunUsage(Struct):
    elements_processed: int
    credits_used: int
    element_type: str = "image"


class VlmRunResponse(Struct):
    id: str
    status: VlmRunStatus
    created_at: str
    usage: VlmRunUsage  # (nothing processed yet while pending, running or failed)
    domain: str | None = None
    completed_at: str | None = None
    response: Any = None
    metadata: dict[str, Any] = {}
    error: str | None = None
