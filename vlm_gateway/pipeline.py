"""One request's whole way, top to bottom, one call per step.

    1. resolve model     ModelRegistry → Model (family, limits)
    2. admit             (API keys and rate limits: gateway/limits/, issue 5)
    3. load images       gateway/images/ → data URIs, checked and sized by `detail`
    4. render prompt     gateway/prompts/ + templates/ → prompt text with the family's image markers
    5. tokenize          the model's tokenizer → token ids
    6. generate          engines/ → async stream of EngineDelta
    7. shape response    gateway/responses.py (JSON) or gateway/streaming.py (SSE)

Steps 1–5 are ``prepare_chat`` / ``prepare_completion``; the routes call ``generate`` and then shape
the response. Every failure is raised as a GatewayError and rendered once by gateway/errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import msgspec

from vlm_gateway.engines import Engine, EngineDelta, EngineRequest
from vlm_gateway.engines.errors import EngineError
from vlm_gateway.errors import ContextLengthExceeded, EngineUnavailable, InvalidRequest, from_engine_error
from vlm_gateway.images.load import DetailRule, ImageLoader, ImageSource
from vlm_gateway.limits import Limiter, Permit
from vlm_gateway.limits.rate import ANONYMOUS, Caller
from vlm_gateway.models import Model, ModelRegistry
from vlm_gateway.prompts.families import FamilyDetail
from vlm_gateway.prompts.order import reorder_images_first, strings_to_parts
from vlm_gateway.prompts.raw_completions import map_image_markers
from vlm_gateway.prompts.render import render_chat
from vlm_gateway.sampling import chat_sampling, completion_sampling
from vlm_gateway.schemas.openai import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ImagePart,
    ImageUrlPart,
)
from vlm_gateway.settings import Settings
from vlm_gateway.tokenize import Tokenizer
from vlm_gateway.usage import Tally


class Services(msgspec.Struct):
    """What the pipeline needs, created once in the app's lifespan and handed down."""

    settings: Settings
    models: ModelRegistry
    engines: dict[str, Engine]
    tokenizers: dict[str, Tokenizer]
    images: ImageLoader
    limiter: Limiter


class Prepared(msgspec.Struct):
    """A request ready for the engine, plus what the response needs to know."""

    model: Model
    model_name: str  # as the client asked for it (an id or an alias); responses echo it
    engine_request: EngineRequest
    response_id: str
    created: int
    prompt_param: Literal["messages", "prompt"]  # the field an error about the prompt names
    tally: Tally  # usage, counted once as the engine reports it (see ``generate``)
    permit: Permit  # released when the engine stream ends (see ``generate``)

    @property
    def image_count(self) -> int:
        return self.tally.image_count


# --- step 3 helpers: where a request's images are --------------------------------------------------

def chat_image_sources(messages: list[ChatMessage]) -> list[ImageSource]:
    sources = []
    for i, message in enumerate(messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if isinstance(part, ImageUrlPart):
                sources.append(ImageSource(part.image_url.url, part.image_url.detail,
                                           f"messages[{i}].content[{j}].image_url"))
            elif isinstance(part, ImagePart):
                url = part.url or part.image
                if not url:
                    raise InvalidRequest("an image part needs a url", param=f"messages[{i}].content[{j}]")
                sources.append(ImageSource(url, part.detail, f"messages[{i}].content[{j}]"))
    return sources


def completion_image_sources(req: CompletionRequest) -> list[ImageSource]:
    images = req.images if req.images is not None else (req.extra_body.images if req.extra_body else None)
    sources = []
    for i, image in enumerate(images or []):
        if isinstance(image, str):
            sources.append(ImageSource(image, "auto", f"images[{i}]"))
        else:
            sources.append(ImageSource(image.url, image.detail, f"images[{i}]"))
    return sources


def _check_image_count(svc: Services, model: Model, count: int, param: str) -> None:
    limit = min(model.max_images, svc.settings.images.max_images_per_request)
    if count > limit:
        raise InvalidRequest(f"{count} images sent; model {model.id} takes at most {limit} per request",
                             param=param, code="too_many_images")


def detail_rule(detail: FamilyDetail) -> DetailRule:
    """The family's `detail` data (templates/families.toml) as the image loader's size limits."""
    return DetailRule(low_max_side=detail.low_max_side, high_max_pixels=detail.max_pixels or None,
                      min_pixels=detail.min_pixels or None)


async def _load_images(svc: Services, model: Model, sources: list[ImageSource]) -> list[str]:
    if not sources:
        return []
    loaded = await svc.images.load(sources, detail_rule(model.family.detail))
    return [image.url for image in loaded]


# --- steps 1–5 ----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def admitted(svc: Services, caller: Caller, model: Model, queued: bool = False):
    """Step 2: the caller's key may use this model and is within its limits (else 404 / 429).
    A ``queued`` job paid its requests/min at submission and waits for a slot instead of a 429.
    The permit is handed on to ``generate``, or released here if preparing the request fails."""
    names = (model.id, *model.aliases)
    permit = await (svc.limiter.admit_waiting(caller, names) if queued else svc.limiter.admit(caller, names))
    try:
        yield permit
    except BaseException:
        await permit.release()
        raise


async def admit_submission(svc: Services, caller: Caller, model_name: str) -> Model:
    """Step 2 for a job at submission: the model exists and the key may use it (404), and the job
    counts against the key's requests/min (429). Concurrency and tokens/min apply when it runs."""
    model = svc.models.resolve(model_name)
    svc.limiter.check_model(caller, (model.id, *model.aliases))
    await svc.limiter.check_rate(caller)
    return model


async def prepare_chat(svc: Services, req: ChatCompletionRequest, caller: Caller = ANONYMOUS,
                       queued: bool = False) -> Prepared:
    model = svc.models.resolve(req.model)                                   # 1. resolve model
    async with admitted(svc, caller, model, queued) as permit:              # 2. admit
        return await _prepare_chat(svc, req, model, permit)


async def _prepare_chat(svc: Services, req: ChatCompletionRequest, model: Model, permit: Permit) -> Prepared:
    messages = req.messages                                                 # family-data reshaping
    if model.family.string_content_as_parts:
        messages = strings_to_parts(messages)
    if model.images_before_text:
        messages = reorder_images_first(messages)
    sources = chat_image_sources(messages)
    _check_image_count(svc, model, len(sources), "messages")
    tokenizer = svc.tokenizers[model.id]
    sampling = chat_sampling(req, tokenizer.token_ids(model.family.stop))

    async def prompt_ids() -> list[int]:
        prompt = render_chat(model.family, messages)                        # 4. render prompt
        return await tokenizer.encode(prompt.text, model.family.add_special_tokens)  # 5. tokenize

    images, token_ids = await asyncio.gather(                                # 3. load images (concurrently)
        _load_images(svc, model, sources), prompt_ids())
    return _prepared(model, req.model, token_ids, images, sampling, "chatcmpl", "messages", permit)


async def prepare_completion(svc: Services, req: CompletionRequest, caller: Caller = ANONYMOUS,
                             queued: bool = False) -> Prepared:
    model = svc.models.resolve(req.model)                                   # 1. resolve model
    async with admitted(svc, caller, model, queued) as permit:              # 2. admit
        return await _prepare_completion(svc, req, model, permit)


async def _prepare_completion(svc: Services, req: CompletionRequest, model: Model, permit: Permit) -> Prepared:
    sources = completion_image_sources(req)
    _check_image_count(svc, model, len(sources), "images")
    raw = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    text = map_image_markers(model.family, raw, len(sources))               # 4. prompt: markers → native
    tokenizer = svc.tokenizers[model.id]
    sampling = completion_sampling(req, tokenizer.token_ids(model.family.stop))
    images, token_ids = await asyncio.gather(                                # 3. load images, 5. tokenize
        _load_images(svc, model, sources), tokenizer.encode(text, add_special_tokens=True))
    return _prepared(model, req.model, token_ids, images, sampling, "cmpl", "prompt", permit)


def _prepared(model: Model, name: str, token_ids: list[int], images: list[str], sampling, prefix: str,
              param: Literal["messages", "prompt"], permit: Permit) -> Prepared:
    if not token_ids:
        raise InvalidRequest("the prompt is empty", param=param)
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    return Prepared(
        model=model,
        model_name=name,
        engine_request=EngineRequest(request_id, token_ids, images, sampling, timeout_s=permit.timeout_s),
        response_id=request_id,
        created=int(time.time()),
        prompt_param=param,
        tally=Tally(sent_tokens=len(token_ids), image_count=len(images)),
        permit=permit,
    )


# --- step 6 -------------------------------------------------------------------------------------

async def generate(svc: Services, prepared: Prepared) -> AsyncIterator[EngineDelta]:
    """The engine's output deltas; what they say about tokens goes to ``prepared.tally`` (usage-only
    deltas are not passed on). The engine enforces the permit's time limit (``timeout_s`` of the engine
    request); the permit is released (with the tokens used, for per-minute token limits) however the
    stream ends: done, failed, timed out, or closed early because the client went away (closing the
    engine stream aborts the engine request).

    A prompt that cannot fit the model's context (the configured length, else the engine's) is refused
    before it is sent. Its ids hold one placeholder per image, which the engine expands: their count is
    a lower bound, so only a sure overflow is refused here; the engine rejects the rest. Engine errors
    are raised as the gateway's (``from_engine_error``), naming the prompt's field."""
    permit, tally, request = prepared.permit, prepared.tally, prepared.engine_request
    param = prepared.prompt_param
    try:
        engine = svc.engines[prepared.model.id]
        if not engine.ready:
            raise EngineUnavailable(f"the engine for {prepared.model.id} is not up yet; retry shortly",
                                    headers={"Retry-After": "5"})
        limit = prepared.model.context_length or engine.max_model_len
        completion = request.sampling.max_tokens
        if limit and len(request.token_ids) + max(completion or 0, 1) > limit:  # vLLM needs room for 1 token
            raise ContextLengthExceeded.tokens(limit, len(request.token_ids), completion, param)
        await permit.check()
        stream = engine.generate(request)
        try:
            async for delta in stream:
                await permit.check()  # a slot that lapsed while this replica stood still stops here
                if not tally.take(delta):
                    yield delta
        except EngineError as exc:
            raise from_engine_error(exc, param) from exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await permit.release(tally.total if tally.prompt_tokens is not None else 0)
