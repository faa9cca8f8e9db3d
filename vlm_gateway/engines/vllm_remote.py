"""Client of one stock vLLM server started with ``--enable-scale-out`` (``VLLMServer``, a ``Server`` of an
engine pool: ``vlm_gateway.engines.pool`` routes, checks health and fails over).

The gateway has already rendered and tokenized the prompt, so it calls vLLM's token-in endpoint
``POST /inference/v1/generate`` with ``token_ids`` and the images, one of two ways:

- ``features``: where the gateway made each image's model input (``EngineRequest.features``, the ids
  already expanded), vLLM's ``MultiModalKwargsItem`` per image under its key. vLLM's API server then
  decodes, hashes and processes no image. An image this server was already sent goes by its key alone
  (``kwargs_data`` null: vLLM's engine takes it from its own cache); when the engine has dropped it
  since (a restart, its cache's eviction), it answers 500 before any output, and the request is sent
  once more with every image's data (as is any request with images that fails before any output: vLLM's
  frontend may have sent an image by key that its engine never got, see ``VLLMServer.generate``).
- ``content_parts``: the images as data URIs, the family's placeholder token once per image; vLLM's
  processor expands each placeholder. Each image goes with its key as ``uuid`` (vLLM hashes no image),
  and an image this server was already sent goes by its key alone (``url`` null: vLLM's processor cache
  has it, so its API server decodes and processes nothing); a cache miss is a 400 before any output,
  and the request is sent once more with every image's data.

vLLM detokenizes (``output_mode="text"``). With ``features`` the prompt is the gateway's own, so vLLM is
asked neither to echo it (``return_token_ids``) nor, streamed, for a usage chunk: the gateway has both.
A caller that stops iterating aborts the request at ``/inference/v1/abort_requests``. Its health is
``GET /health``, its context length ``max_model_len`` at ``GET /v1/models``. Failures are raised as
``vlm_gateway.engines.errors``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from vlm_gateway import metrics
from vlm_gateway.cache import LRUCache
from vlm_gateway.engines import Candidate, EngineDelta, EngineRequest, Probe, SamplingParams, TokenLogprob
from vlm_gateway.engines._wire import (
    ErrorBody,
    Usage,
    as_engine_errors,
    engine_error,
    http_error,
    once_more_before_output,
    post,
    sse_data,
    status_of,
)
from vlm_gateway.engines.errors import EngineCacheMiss, EngineCrashed, EngineUnreachable

log = logging.getLogger("vlm_gateway.engine")

PROBE_TIMEOUT_S = 5.0
ABORT_TIMEOUT_S = 1.0
# What the gateway assumes a server still holds of the image inputs it was sent: well under vLLM's
# default multimodal processor cache (4 GiB, LRU), which other clients of the server share.
HELD_ENTRIES = 4096
HELD_BYTES = 1024**3
# An image sent as such is held as vLLM's processed tensors: float32 RGB, doubled by Qwen's temporal patch.
HELD_BYTES_PER_PIXEL = 3 * 4 * 2
IMAGE_KEY = "vlmgw-img-"  # + the sha256 of the image's bytes: the ``uuid`` vLLM keeps a sent image under


def held_inputs() -> LRUCache[str, int]:
    """Keys of the image inputs one server was sent (their size as sent), newest last, within bounds."""
    return LRUCache(HELD_ENTRIES, math.inf, max_bytes=HELD_BYTES, sizeof=lambda size: size)


class _Top(msgspec.Struct):
    token: str
    logprob: float = -9999.0
    bytes: list[int] | None = None


class _Position(msgspec.Struct):
    token: str
    logprob: float = -9999.0  # vLLM's sentinel when the chosen token has no logprob
    bytes: list[int] | None = None
    top_logprobs: list[_Top] = []


class _Logprobs(msgspec.Struct):
    content: list[_Position] | None = None


class _PromptLogprob(msgspec.Struct):
    logprob: float = -9999.0
    rank: int | None = None
    decoded_token: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _Placeholder(msgspec.Struct):
    offset: int
    length: int


class _Chunk(msgspec.Struct):
    """One SSE chunk of ``/inference/v1/generate`` (output_mode "text"), or its whole non-streamed
    answer (which alone carries ``prompt_logprobs``: per prompt position, token id → logprob)."""

    choices: list[_Choice] = []
    prompt_token_ids: list[int] | None = None
    mm_placeholders: dict[str, list[_Placeholder]] | None = None  # first chunk: where each image's tokens are
    usage: Usage | None = None
    error: ErrorBody | None = None
    prompt_logprobs: list[dict[int, _PromptLogprob] | None] | None = None


class _ErrorResponse(msgspec.Struct):
    error: ErrorBody | None = None
    detail: object = None


class _ModelCard(msgspec.Struct):
    max_model_len: int | None = None


class _ModelList(msgspec.Struct):
    data: list[_ModelCard] = []


_DECODE_CHUNK = msgspec.json.Decoder(_Chunk)
_DECODE_MODELS = msgspec.json.Decoder(_ModelList)
_ENCODE = msgspec.json.Encoder()


class VLLMServer:
    """One stock vLLM server started with ``--enable-scale-out`` (a ``Server`` of an engine pool)."""

    def __init__(self, url: str, session: aiohttp.ClientSession, image_cache: bool = True) -> None:
        self.url = url.rstrip("/")
        self._session = session
        self._held = held_inputs() if image_cache else None  # image inputs sent by key once sent with data

    async def probe(self) -> Probe:
        try:
            async with self._session.get(self.url + "/health",
                                         timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as resp:
                return "up" if resp.status == 200 else "down"
        except aiohttp.ClientConnectorError:
            return "refused"
        except (TimeoutError, aiohttp.ClientError):
            return "down"

    async def read_max_model_len(self) -> int | None:
        try:
            async with self._session.get(
                self.url + "/v1/models", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
            ) as resp:
                models = _DECODE_MODELS.decode(await resp.read()) if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, msgspec.DecodeError):
            models = None
        return models.data[0].max_model_len if models and models.data else None

    async def generate(self, request: EngineRequest, deadline: float, total_s: float) -> AsyncIterator[EngineDelta]:
        by_key = self._by_key(request)

        def again(exc: EngineCrashed) -> AsyncIterator[EngineDelta] | None:
            """A failure before any output of a request with images: an image input went by key and the
            engine no longer held it (vLLM answers a cache miss before any output: a 500 for features, a
            400 "Cache miss" for content parts), or vLLM's own frontend sent one by key (see
            ``once_more_before_output``). Every image's data once more; a miss of an image that was just
            sent is the engine's failure."""
            images = len(request.features or request.images)
            if not images or (not by_key and isinstance(exc, EngineCacheMiss)):
                return None
            if self._held is not None:
                for key in by_key:
                    self._held.discard(key)
            metrics.ENGINE_IMAGE_INPUTS.labels(self.url, "resent").inc(len(by_key) or images)
            return self._generate(request, deadline, total_s, [])

        async with contextlib.aclosing(once_more_before_output(self._generate(request, deadline, total_s, by_key),
                                                               again)) as deltas:
            async for delta in deltas:
                yield delta

    def _inputs(self, request: EngineRequest) -> list[tuple[str, int]]:
        """Each image input of the request as (key, the size the server's copy is taken to have), in order:
        the gateway-made inputs (``features``), else the images by their bytes' hash (``image_keys``)."""
        if request.features:
            return [(p.features.key, len(p.features.data)) for p in request.features]
        return [(IMAGE_KEY + k.sha256, k.pixels * HELD_BYTES_PER_PIXEL) for k in request.image_keys or ()]

    def _by_key(self, request: EngineRequest) -> list[str]:
        """The keys of the request's image inputs this server holds (sent by key alone)."""
        if self._held is None:
            return []
        return [key for key, _size in self._inputs(request) if self._held.get(key) is not None]

    def _count(self, sent: int, by_key: int) -> None:
        metrics.ENGINE_IMAGE_INPUTS.labels(self.url, "data").inc(sent)
        metrics.ENGINE_IMAGE_INPUTS.labels(self.url, "key").inc(by_key)

    def _features(self, request: EngineRequest, by_key: list[str]) -> dict[str, Any]:
        """vLLM's ``features``: each image's data, or null where the engine has it: held from an earlier
        request, or sent earlier in this one (a conversation resends its image every turn)."""
        placed = request.features or []
        data: list[str | None] = []
        seen = set(by_key)
        for p in placed:
            data.append(None if p.features.key in seen else p.features.data)
            seen.add(p.features.key)
        sent = sum(d is not None for d in data)
        self._count(sent, len(placed) - sent)
        return {"mm_hashes": {"image": [p.features.key for p in placed]},
                "mm_placeholders": {"image": [{"offset": p.offset, "length": p.features.tokens} for p in placed]},
                "kwargs_data": {"image": data}}

    def _content_parts(self, request: EngineRequest, by_key: list[str]) -> list[dict[str, Any]]:
        """vLLM's ``content_parts``: each image as a data URI with its key as ``uuid`` (vLLM then hashes no
        image), or the key alone (``url`` null) where the server holds it from an earlier request. Unlike
        ``features``, a repeat within one request carries its data again: vLLM looks every keyed image up
        before it processes any."""
        if not request.image_keys:
            return [{"type": "image_url", "url": url} for url in request.images]
        held = set(by_key)
        keys = [key for key, _size in self._inputs(request)]
        alone = sum(key in held for key in keys)
        self._count(len(keys) - alone, alone)
        return [{"type": "image_url", "url": None if key in held else url, "uuid": key}
                for key, url in zip(keys, request.images, strict=True)]

    def _sent(self, request: EngineRequest) -> None:
        """The engine took the request: it holds every image input the request carried."""
        if self._held is not None:
            for key, size in self._inputs(request):
                self._held.put(key, size)

    async def _generate(self, request: EngineRequest, deadline: float, total_s: float,
                        by_key: list[str]) -> AsyncIterator[EngineDelta]:
        body: dict[str, Any] = {
            "request_id": request.request_id,
            "token_ids": request.token_ids,
            "sampling_params": _vllm_sampling(request.sampling),
            # where the gateway placed the images itself it knows the prompt vLLM would echo back
            "return_token_ids": not request.features,
            "output_mode": "text",
            # a whole answer where nothing is sent before the end (fewer writes and parses on both sides);
            # prompt logprobs come only in a whole answer
            "stream": request.stream and request.sampling.prompt_logprobs is None,
        }
        # A streamed answer ends with a chunk for usage alone. Where the gateway placed the images the
        # prompt is the request's own, so where the client does not read the usage (its cached tokens are
        # vLLM's to say) the gateway counts it itself and vLLM sends one chunk less.
        own_usage = bool(request.features) and body["stream"] and not request.usage_read
        body["stream_options"] = {"include_usage": not own_usage}
        if request.features:
            body["features"] = self._features(request, by_key)
        elif request.images:
            body["content_parts"] = self._content_parts(request, by_key)
        settled = answered = False  # settled: nothing of it left in the engine to abort
        try:
            with as_engine_errors(total_s):
                async with await post(
                    self._session, self.url + "/inference/v1/generate", _ENCODE.encode(body),
                    {"Content-Type": "application/json", "X-Request-Id": request.request_id},
                    aiohttp.ClientTimeout(total=max(deadline - time.monotonic(), 0.001), sock_connect=5),
                ) as resp:
                    answered = True
                    if resp.status != 200:
                        raise http_error(resp.status, await resp.read())
                    chunks = _sse_chunks(resp.content) if body["stream"] else _whole(resp)
                    first, generated = True, 0
                    async for chunk in chunks:
                        if chunk.error is not None:
                            raise engine_error(status_of(chunk.error.code), chunk.error.message, chunk.error.param)
                        if first:
                            self._sent(request)
                            if request.features:
                                _echo_placed(chunk, request)
                            first = False
                        for delta in _deltas(chunk):
                            generated += len(delta.token_ids)
                            yield delta
                    if own_usage:  # as vLLM counts it: the prompt's ids, and every token id it streamed
                        yield EngineDelta(prompt_tokens=len(request.token_ids), completion_tokens=generated)
                    settled = True
        except EngineUnreachable:
            settled = True  # never connected: the engine never saw it
            raise
        finally:
            if not settled:
                await self._abort(request.request_id, answered)

    async def _abort(self, request_id: str, answering: bool = True) -> None:
        """Stop the request in the engine. Its caller waits (the engine's slot is free when it returns), but
        not long: an engine that does not take the abort at once (``answering``: it had answered the
        request; else it may never have read it) is one that hangs, and the caller's error is due now."""
        # vLLM names the request "generate-tokens-<id>" internally; send both forms.
        ids = [request_id, f"generate-tokens-{request_id}"]
        try:
            async with self._session.post(
                self.url + "/inference/v1/abort_requests",
                data=_ENCODE.encode({"request_ids": ids}),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=ABORT_TIMEOUT_S if answering else ABORT_TIMEOUT_S / 4),
            ):
                pass
        except (TimeoutError, aiohttp.ClientError):
            log.warning("could not abort request %s on %s", request_id, self.url)


GREEDY_BELOW = 1e-5  # vLLM's: a temperature under it is greedy sampling


def _vllm_sampling(sampling: SamplingParams) -> SamplingParams:
    """vLLM refuses greedy sampling with n > 1 (OpenAI takes it: n copies of the greedy answer), but not
    its equal: sampling at temperature 1 from the most likely token alone."""
    if sampling.n > 1 and sampling.temperature is not None and sampling.temperature < GREEDY_BELOW:
        return msgspec.structs.replace(sampling, temperature=1.0, top_k=1)
    return sampling


def _echo_placed(chunk: _Chunk, request: EngineRequest) -> None:
    """The first chunk as vLLM's ``return_token_ids`` would have made it for a request whose images the
    gateway placed (``features``): its prompt ids and placeholders are the request's own, so vLLM is not
    asked to encode them (a prompt of thousands of ids for a large image) nor the gateway to parse them."""
    placed = request.features or []
    chunk.prompt_token_ids = request.token_ids
    chunk.mm_placeholders = {"image": [_Placeholder(p.offset, p.features.tokens) for p in placed]}


async def _sse_chunks(stream: aiohttp.StreamReader) -> AsyncIterator[_Chunk]:
    async for data in sse_data(stream):
        yield _DECODE_CHUNK.decode(data)


async def _whole(resp: aiohttp.ClientResponse) -> AsyncIterator[_Chunk]:
    yield _DECODE_CHUNK.decode(await resp.read())


def _logprobs(choice: _Choice) -> list[TokenLogprob] | None:
    if choice.logprobs is None or choice.logprobs.content is None:
        return None
    return [TokenLogprob(p.token, p.logprob, p.bytes, [Candidate(t.token, t.logprob, t.bytes) for t in p.top_logprobs])
            for p in choice.logprobs.content]


def _prompt_logprobs(chunk: _Chunk) -> list[TokenLogprob | None] | None:
    """vLLM's per-position maps (token id → logprob, rank, text) as the prompt token's own entry plus
    the most likely tokens by rank (itself among them where it is one)."""
    if chunk.prompt_logprobs is None or chunk.prompt_token_ids is None:
        return None
    out: list[TokenLogprob | None] = []
    for token_id, position in zip(chunk.prompt_token_ids, chunk.prompt_logprobs, strict=False):
        own = position.get(token_id) if position else None
        if position is None or own is None:
            out.append(None)
            continue
        ranked = sorted(position.values(), key=lambda p: p.rank or 0)
        out.append(TokenLogprob(own.decoded_token or "", own.logprob, None,
                                [Candidate(p.decoded_token or "", p.logprob) for p in ranked]))
    return out


def _deltas(chunk: _Chunk) -> list[EngineDelta]:
    prompt_logprobs = _prompt_logprobs(chunk)
    image_tokens = sum(p.length for p in chunk.mm_placeholders.get("image", [])) if chunk.mm_placeholders else None
    out = [
        EngineDelta(
            index=c.index,
            text=c.text,
            token_ids=c.token_ids or [],
            finish_reason=c.finish_reason,
            prompt_token_ids=chunk.prompt_token_ids,
            image_tokens=image_tokens,
            logprobs=_logprobs(c),
            prompt_logprobs=prompt_logprobs,
        )
        for c in chunk.choices
    ]
    if chunk.usage is not None:
        out.append(chunk.usage.delta())
    return out
