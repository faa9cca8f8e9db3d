"""One request's whole way, top to bottom, one call per step.

    1. resolve model     ModelRegistry → Model (family, limits)
    2. admit             (API keys and rate limits: gateway/limits/, issue 5)
    3. load images       gateway/images/ → data URIs, checked and sized by `detail` (and, for families
                         whose processor the gateway runs, the model's input: images/features.py)
    4. render prompt     gateway/prompts/ + templates/ → prompt text with the family's image markers
    5. tokenize          the model's tokenizer → token ids (each image's placeholder expanded to its
                         tokens where the gateway made the image's input)
    6. generate          engines/ → async stream of EngineDelta
    7. shape response    gateway/responses.py (JSON) or gateway/streaming.py (SSE)

Steps 1–5 are ``prepare_chat`` / ``prepare_completion``; the routes call ``generate`` and then shape
the response. Every failure is raised as a GatewayError and rendered once by gateway/errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal

import msgspec

from vlm_gateway import metrics
from vlm_gateway.engines import Engine, EngineDelta, EngineRequest, ImageKey, PlacedImage, SamplingParams
from vlm_gateway.engines.errors import EngineError
from vlm_gateway.engines.merged import merged
from vlm_gateway.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    GatewayError,
    InvalidRequest,
    RateLimited,
    from_engine_error,
)
from vlm_gateway.files import FileStore
from vlm_gateway.ids import new_id
from vlm_gateway.images.features import Preprocessor, expand
from vlm_gateway.images.inputs import ImageInput, chat_image_sources, completion_image_sources, detail_rule
from vlm_gateway.images.load import ImageLoader, ImageSource, LoadedImage
from vlm_gateway.limits import Limiter, Permit
from vlm_gateway.limits.rate import ANONYMOUS, Caller
from vlm_gateway.logprobs import exact_bytes
from vlm_gateway.models import Model, ModelRegistry
from vlm_gateway.prompts.order import reorder_images_first, strings_to_parts
from vlm_gateway.prompts.raw_completions import completion_prompts, map_image_markers
from vlm_gateway.prompts.render import render_chat
from vlm_gateway.prompts.upstream import upstream_chat
from vlm_gateway.routing import affinity_key
from vlm_gateway.sampling import NO_DEFAULTS, SamplingDefaults, chat_sampling, completion_sampling
from vlm_gateway.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    Tool,
)
from vlm_gateway.settings import Settings
from vlm_gateway.tokenize import Tokenizer
from vlm_gateway.tools import ToolFormat, plan_tools
from vlm_gateway.usage import Tally


class Services(msgspec.Struct):
    """What the pipeline needs, created once in the app's lifespan and handed down."""

    settings: Settings
    models: ModelRegistry
    engines: dict[str, Engine]
    tokenizers: dict[str, Tokenizer]
    images: ImageLoader
    limiter: Limiter
    files: FileStore | None = None  # uploaded files (/v1/files), for images sent by file_id
    preprocessors: dict[str, Preprocessor | None] = {}  # by model id: where the gateway makes image input
    sampling_defaults: dict[str, SamplingDefaults] = {}  # by model id: its generation_config.json


class Echo(msgspec.Struct):
    """What completions' ``echo`` puts before a prompt's choices: the prompt as text, and its first
    token (which has no logprob, so the engine does not name it)."""

    text: str
    first_token: str


class ToolParsing(msgspec.Struct, frozen=True):
    """How to read tool calls out of a request's output (``tools.parse_tool_calls`` / ``ToolCallStream``)."""

    format: ToolFormat
    tools: list[Tool]
    one_call: bool  # parallel_tool_calls false, or the family's template takes one call per turn


class Prepared(msgspec.Struct):
    """A request ready for the engine, plus what the response needs to know."""

    model: Model
    model_name: str  # as the client asked for it (an id or an alias); responses echo it
    engine_requests: list[EngineRequest]  # one per prompt (completions may send several); choices of
    # prompt k are numbered k * n ... k * n + n - 1
    response_id: str
    created: int
    prompt_param: Literal["messages", "prompt"]  # the field an error about the prompt names
    tally: Tally  # usage, counted once as the engine reports it (see ``generate``)
    permit: Permit  # released when the engine stream ends (see ``generate``)
    echo: list[Echo] | None = None  # completions with ``echo``: one per prompt
    tool_parsing: ToolParsing | None = None  # chat with tools: the output is read for tool calls
    prompt_text: str | None = None  # chat: the rendered prompt (POST /v1/chat/completions/render shows it)
    structured_param: str | None = None  # the field the structured output came from (an engine's refusal
    # of its schema names it): response_format, or tools for a forced call
    echo_only: bool = False  # completions with echo and max_tokens 0: the one token vLLM makes is not shown
    max_tokens_at_most: bool = False  # max_tokens is a cap (vlm.run's): past the context, the rest of it

    @property
    def image_count(self) -> int:
        return self.tally.image_count

    @property
    def sampling(self) -> SamplingParams:
        return self.engine_requests[0].sampling

    @property
    def choices(self) -> int:
        return self.sampling.n * len(self.engine_requests)


# --- step 3 helpers ------------------------------------------------------------------------------

def _check_image_count(svc: Services, model: Model, count: int, param: str) -> None:
    limit = min(model.max_images, svc.settings.images.max_images_per_request)
    if count > limit:
        raise InvalidRequest(f"{count} images sent; model {model.id} takes at most {limit} per request",
                             param=param, code="too_many_images")


async def _load_images(svc: Services, model: Model, caller: Caller, inputs: list[ImageInput]) -> list[LoadedImage]:
    if not inputs:
        return []

    async def source(image: ImageInput) -> ImageSource:
        if image.file_id is None:
            return ImageSource(image.url or "", image.detail, image.param)  # type: ignore[arg-type]
        if svc.files is None:
            raise InvalidRequest("this gateway stores no files", param=image.param)
        return await svc.files.image_source(caller, image.file_id, detail=image.detail,  # type: ignore[arg-type]
                                            param=image.param)

    if any(image.file_id is not None for image in inputs):
        sources = await asyncio.gather(*(source(image) for image in inputs))
    else:  # URLs only: nothing to look up, so no task per image
        sources = [ImageSource(image.url or "", image.detail, image.param) for image in inputs]  # type: ignore[arg-type]
    return await svc.images.load(list(sources), detail_rule(model.family.detail), svc.preprocessors.get(model.id))


def _outcome_read(task: asyncio.Future) -> None:
    """A done callback for a task whose outcome no one awaits (no "exception never retrieved")."""
    if not task.cancelled():
        task.exception()


def image_token_id(tokenizer: Tokenizer, model: Model) -> int | None:
    ids = tokenizer.token_ids((model.family.image_token,))
    return ids[0] if ids else None


# --- steps 1–5 ----------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def admitted(svc: Services, caller: Caller, model: Model, queued: bool = False):
    """Step 2: the caller's key may use this model and is within its limits (else 404 / 429).
    A ``queued`` job paid its requests/min at submission and waits for a slot instead of a 429.
    The permit is handed on to ``generate``, or released here if preparing the request fails."""
    names = (model.id, *model.aliases)
    with counted_429(caller):
        permit = await (svc.limiter.admit_waiting(caller, names) if queued else svc.limiter.admit(caller, names))
    try:
        yield permit
    except BaseException:
        await permit.release()
        raise


async def admit_submission(svc: Services, caller: Caller, model_name: str) -> dict[str, str]:
    """Step 2 for a job at submission: the model exists and the key may use it (404), and the job
    counts against the key's requests/min (429). Concurrency and tokens/min apply when it runs. The
    key's ``x-ratelimit-*`` headers, for the answer."""
    model = svc.models.resolve(model_name)
    svc.limiter.check_model(caller, (model.id, *model.aliases))
    with counted_429(caller):
        return await svc.limiter.check_rate(caller)


@contextlib.contextmanager
def counted_429(caller: Caller):
    try:
        yield
    except RateLimited as exc:
        metrics.RATE_LIMITED.labels(caller.name, exc.code or "rate_limit_exceeded").inc()
        raise


async def prepare_chat(svc: Services, req: ChatCompletionRequest, caller: Caller = ANONYMOUS,
                       queued: bool = False) -> Prepared:
    model = svc.models.resolve(req.model)                                   # 1. resolve model
    async with admitted(svc, caller, model, queued) as permit:              # 2. admit
        return await _prepare_chat(svc, req, model, permit, caller)


async def _prepare_chat(svc: Services, req: ChatCompletionRequest, model: Model, permit: Permit,
                        caller: Caller) -> Prepared:
    if req.functions is not None or req.function_call is not None:  # (not silently answered without them)
        raise InvalidRequest("functions and function_call are OpenAI's deprecated form of tools; send tools "
                             "and tool_choice", param="functions" if req.functions is not None else "function_call")
    messages = req.messages                                                 # family-data reshaping
    if model.family.string_content_as_parts:
        messages = strings_to_parts(messages)
    if model.images_before_text:
        messages = reorder_images_first(messages)
    sources = chat_image_sources(messages)
    _check_image_count(svc, model, len(sources), "messages")
    tokenizer = svc.tokenizers[model.id]
    sampling = chat_sampling(req, tokenizer.token_ids(model.family.stop),
                             svc.sampling_defaults.get(model.id, NO_DEFAULTS))
    family_tools = model.family.tools
    plan = plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls, family_format=family_tools)
    if plan.structured_outputs is not None:                                 # a forced tool call: this turn
        sampling.structured_outputs = plan.structured_outputs               # is a call, so response_format
        # (the shape of a reply in words) has nothing to shape; agents send both on every turn (OpenAI's)

    loading = asyncio.ensure_future(_load_images(svc, model, caller, sources)) if sources else None  # 3. load images
    try:                                                                    # (concurrently with 4 and 5)
        prompt_text = render_chat(model.family, messages, tools=plan.prompt_tools).text  # 4. render prompt
        token_ids = await tokenizer.encode(prompt_text, model.family.add_special_tokens)  # 5. tokenize
        images = await loading if loading is not None else []
    except BaseException:
        if loading is not None:  # the prompt failed: stop loading its images, and drop their outcome
            loading.cancel()
            loading.add_done_callback(_outcome_read)
        raise
    prepared = _prepared(model, req.model, [token_ids], images, sampling, "chatcmpl", "messages", permit,
                         image_token_id(tokenizer, model), req.prompt_cache_key)
    prepared.prompt_text = prompt_text
    if plan.structured_outputs is not None:
        prepared.structured_param = "tools"
    if model.engine_renders:  # a server of the pool renders the chat itself
        prepared.engine_requests[0].chat = upstream_chat(messages, plan.prompt_tools, [i.url for i in images])
    output_format = plan.output_format(family_tools)
    if output_format is not None:
        one_call = not req.parallel_tool_calls or (family_tools is not None and not family_tools.parallel)
        prepared.tool_parsing = ToolParsing(output_format, plan.tools, one_call)
    return prepared


async def prepare_completion(svc: Services, req: CompletionRequest, caller: Caller = ANONYMOUS,
                             queued: bool = False) -> Prepared:
    model = svc.models.resolve(req.model)                                   # 1. resolve model
    async with admitted(svc, caller, model, queued) as permit:              # 2. admit
        return await _prepare_completion(svc, req, model, permit, caller)


MAX_COMPLETION_CHOICES = 128  # prompts x n in one /v1/completions request


async def _prepare_completion(svc: Services, req: CompletionRequest, model: Model, permit: Permit,
                              caller: Caller) -> Prepared:
    prompts = completion_prompts(req.prompt)
    if len(prompts) * req.n > MAX_COMPLETION_CHOICES:
        raise InvalidRequest(f"{len(prompts)} prompts x n={req.n} choices is more than the "
                             f"{MAX_COMPLETION_CHOICES} one request may ask for", param="prompt")
    if req.return_token_ids and len(prompts) > 1:  # the answer has one place for them
        raise InvalidRequest("return_token_ids goes with one prompt: send the prompts as separate requests",
                             param="return_token_ids")
    sources = completion_image_sources(req)
    _check_image_count(svc, model, len(sources), "images")
    if sources and (len(prompts) != 1 or not isinstance(prompts[0], str)):
        raise InvalidRequest("images go with one string prompt that marks where each image goes", param="images")
    tokenizer = svc.tokenizers[model.id]
    sampling = completion_sampling(req, tokenizer.token_ids(model.family.stop),
                                   svc.sampling_defaults.get(model.id, NO_DEFAULTS))

    async def ids(prompt: str | list[int]) -> list[int]:                    # 4. prompt: markers → native
        if not isinstance(prompt, str):
            tokenizer.check_ids(prompt, "prompt")
            return prompt
        text = map_image_markers(model.family, prompt, len(sources))
        return await tokenizer.encode(text, add_special_tokens=True)        # 5. tokenize

    images, *token_ids = await asyncio.gather(                              # 3. load images, 5. tokenize
        _load_images(svc, model, caller, sources), *(ids(p) for p in prompts))
    prepared = _prepared(model, req.model, token_ids, images, sampling, "cmpl", "prompt", permit,
                         image_token_id(tokenizer, model))
    prepared.echo_only = req.max_tokens == 0
    if req.echo:
        prepared.echo = [Echo(p if isinstance(p, str) else tokenizer.decode(p), tokenizer.decode(ids[:1]))
                         for p, ids in zip(prompts, token_ids, strict=True)]
    return prepared


def _prepared(model: Model, name: str, prompts: list[list[int]], loaded: list[LoadedImage], sampling,
              prefix: str, param: Literal["messages", "prompt"], permit: Permit,
              image_token_id: int | None = None, cache_key: str | None = None) -> Prepared:
    if not all(prompts):
        raise InvalidRequest("the prompt is empty", param=param)
    request_id = f"{prefix}-{new_id()}"
    images, hashes = [image.url for image in loaded], [image.sha256 for image in loaded]
    requests = [EngineRequest(request_id if len(prompts) == 1 else f"{request_id}-{k}", ids, images, sampling,
                              timeout_s=permit.timeout_s, affinity=affinity_key(hashes, ids, cache_key),
                              image_keys=[ImageKey(i.sha256, i.width * i.height) for i in loaded] or None)
                for k, ids in enumerate(prompts)]
    if loaded and image_token_id is not None and all(image.features for image in loaded):
        for request in requests:
            _place_features(request, loaded, image_token_id)
    return Prepared(
        model=model,
        model_name=name,
        engine_requests=requests,
        response_id=request_id,
        created=int(time.time()),
        prompt_param=param,
        structured_param="response_format" if sampling.structured_outputs is not None else None,
        tally=Tally(sent_tokens=sum(map(len, prompts)), image_count=len(images)),
        permit=permit,
    )


def _place_features(request: EngineRequest, loaded: list[LoadedImage], image_token_id: int) -> None:
    """The images as the model's input made by the gateway, each placeholder expanded to its tokens (as
    the engine's processor would have): engines that take input so send no images. A prompt whose
    placeholders do not match its images keeps them for the engine to judge."""
    features = [image.features for image in loaded if image.features is not None]
    try:
        ids, offsets = expand(request.token_ids, image_token_id, features)
    except ValueError:
        return
    request.token_ids = ids
    request.features = [PlacedImage(offset, f) for offset, f in zip(offsets, features, strict=True)]


def _unshown(delta: EngineDelta) -> EngineDelta:
    """``delta`` without the generated token of an echo-only request (its prompt ids, prompt logprobs and
    finish reason stay)."""
    completion = None if delta.completion_tokens is None else 0
    return msgspec.structs.replace(delta, text="", token_ids=[], logprobs=None, completion_tokens=completion)


# --- step 6 -------------------------------------------------------------------------------------

async def generate(svc: Services, prepared: Prepared) -> AsyncIterator[EngineDelta]:
    """The engine's output deltas; what they say about tokens goes to ``prepared.tally`` (usage-only
    deltas are not passed on). The engine enforces the permit's time limit (``timeout_s`` of the engine
    request); the permit is released (with the tokens used, for per-minute token limits) however the
    stream ends: done, failed, timed out, or closed early because the client went away (closing the
    engine stream aborts the engine request). Several prompts run at once, their choices numbered on.

    A prompt that cannot fit the model's context (the configured length, else the engine's) is refused
    before it is sent. Its ids hold one placeholder per image, which the engine expands: their count is
    a lower bound, so only a sure overflow is refused here; the engine rejects the rest. Engine errors
    are raised as the gateway's (``from_engine_error``), naming the prompt's field."""
    permit, tally = prepared.permit, prepared.tally
    param = prepared.prompt_param
    model, outcome, started = prepared.model.id, "cancelled", metrics.arrived()
    in_flight = metrics.ENGINE_IN_FLIGHT.labels(model)
    try:
        engine = svc.engines[prepared.model.id]
        if not engine.ready and not await engine.recheck():
            raise EngineUnavailable(f"the engine for {prepared.model.id} is not up yet; retry shortly",
                                    headers={"Retry-After": "5"})
        limit = prepared.model.context_length or engine.max_model_len
        completion = prepared.sampling.max_tokens
        for request in prepared.engine_requests:
            if limit and len(request.token_ids) + max(completion or 0, 1) > limit:  # vLLM needs room for 1 token
                if not prepared.max_tokens_at_most or len(request.token_ids) >= limit:
                    raise ContextLengthExceeded.tokens(limit, len(request.token_ids), completion, param)
                request.sampling.max_tokens = None  # vLLM's reading: what the (image-expanded) prompt leaves
        await permit.check()
        await permit.charge(sum(len(r.token_ids) for r in prepared.engine_requests))  # tokens/min: 429 or counted
        metrics.BEFORE_ENGINE.labels(model).observe(time.monotonic() - started)
        stream = merged([engine.generate(r) for r in prepared.engine_requests], prepared.sampling.n)
        in_flight.inc()
        first = True
        try:
            async for delta in stream:
                if first:
                    if prepared.engine_requests[0].stream:  # (a whole answer's first delta is its end)
                        metrics.TIME_TO_FIRST_TOKEN.labels(model).observe(time.monotonic() - started)
                    first = False
                await permit.check()  # a slot that lapsed while this replica stood still stops here
                if prepared.echo_only:
                    delta = _unshown(delta)
                if tally.take(delta):
                    continue
                if delta.logprobs:
                    exact_bytes(delta, svc.tokenizers[model].token_bytes)
                yield delta
        except EngineError as exc:
            raise from_engine_error(exc, param, prepared.structured_param) from exc
        finally:
            in_flight.dec()
            await stream.aclose()  # type: ignore[attr-defined]
        outcome = "ok"
    except GatewayError as exc:
        outcome = exc.code or type(exc).__name__
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        _count(prepared, outcome)
        await permit.release(tally.spent)


def _count(prepared: Prepared, outcome: str) -> None:
    """The request's outcome and its tokens, as ``Tally.spent`` counts them (``metrics``)."""
    model, tally = prepared.model.id, prepared.tally
    metrics.MODEL_REQUESTS.labels(model, outcome).inc()
    if tally.spent:
        usage = tally.usage()
        completion = usage.completion_tokens if tally.prompt_tokens is not None else tally.streamed
        metrics.PROMPT_TOKENS.labels(model).inc(usage.prompt_tokens)
        metrics.COMPLETION_TOKENS.labels(model).inc(completion)
        details = usage.prompt_tokens_details
        metrics.IMAGE_TOKENS.labels(model).inc(details.image_tokens if details else 0)
    metrics.IMAGES.labels(model).inc(tally.image_count)
