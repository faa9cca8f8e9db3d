"""Engines: what generates tokens. The gateway talks to them only through ``Engine``.

An engine takes an ``EngineRequest`` (token ids already rendered and tokenized by the gateway, with
the family's image placeholder token once per image, plus the images as URLs or data URIs; or, where the
gateway preprocesses the family's images, the token ids expanded and each image as ``ImageFeatures``) and
yields ``EngineDelta`` Structs. It knows nothing about HTTP routes or OpenAI shapes; a failure is
raised as one of ``vlm_gateway.engines.errors`` (mapped to OpenAI errors by the gateway).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import msgspec


class SamplingParams(msgspec.Struct, omit_defaults=True):
    """The subset of vLLM's SamplingParams the gateway sets (field names are vLLM's)."""

    max_tokens: int | None = None  # None: vLLM fills the rest of the context
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    n: int = 1
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None  # token id → added to its logit
    logprobs: int | None = None  # alternatives per generated token (0: the sampled token's own only)
    prompt_logprobs: int | None = None  # the same for each prompt token (a non-streamed engine call)
    structured_outputs: dict[str, Any] | None = None
    min_tokens: int = 0
    ignore_eos: bool = False


class ChatInput(msgspec.Struct):
    """A chat request as OpenAI's wire form, for engines that render the prompt themselves (the OpenAI
    pass-through kind). ``messages`` are the client's after the family's reshaping (images first where the
    family wants them); every image part is ``{"type": "image_url", "image_url": {"url": ...}}`` with the
    gateway's loaded image (a data URI sized by ``detail``), in the same order as ``EngineRequest.images``."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None  # OpenAI tool definitions the prompt shows the model


class ImageFeatures(msgspec.Struct, frozen=True):
    """One image as the model's own input, made by the gateway (``vlm_gateway.images.features``): what the
    engine's image processor would have made of it, so the engine only unpacks it."""

    key: str  # names these tensors in the engine's caches (vLLM's mm_hash): same key, same tensors
    tokens: int  # the image's placeholder tokens in the expanded prompt
    data: str  # base64 of vLLM's msgpack-encoded MultiModalKwargsItem


class PlacedImage(msgspec.Struct, frozen=True):
    """An image's features and where its tokens start in the (expanded) prompt."""

    offset: int
    features: ImageFeatures


class ImageKey(msgspec.Struct, frozen=True):
    """An image of ``EngineRequest.images`` by the sha256 of its bytes, and its pixels (what an engine's
    processed copy of it grows with)."""

    sha256: str
    pixels: int


class EngineRequest(msgspec.Struct):
    request_id: str
    token_ids: list[int]
    images: list[str]  # URLs or data URIs, in placeholder order
    sampling: SamplingParams
    timeout_s: float | None = None  # the whole request, first byte to last; None: the engine's default
    affinity: str | None = None  # what the engine's caches know it by (``vlm_gateway.routing.affinity_key``)
    chat: ChatInput | None = None  # chat requests to pools with an engine that renders itself; else None
    stream: bool = True  # False: nothing is sent before the end, so the engine answers in one body (less work)
    # False: the client never sees this request's usage (a stream without ``stream_options.include_usage``), so
    # an engine that can count it from the request (the prompt it was sent, the tokens it streamed) need not
    # be asked for its own count, with the cached tokens only the engine knows
    usage_read: bool = True
    # The images preprocessed by the gateway, in order; ``token_ids`` are then already expanded. Engines that
    # take features (vLLM token-in) send these instead of ``images``; the others send ``images``.
    features: list[PlacedImage] | None = None
    # What each of ``images`` is known by, for engines that keep images they were sent and take them by key
    # alone the next time; None: not known.
    image_keys: list[ImageKey] | None = None


class Candidate(msgspec.Struct):
    """A token the model could have chosen at one position, and its log probability."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(msgspec.Struct):
    """The token at one position, its log probability and the most likely ``top`` alternatives (in the
    engine's order, the chosen token first when it is among them)."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top: list[Candidate] = []


class EngineDelta(msgspec.Struct):
    """One step of output for one choice. The first delta of a request carries the prompt ids."""

    index: int = 0
    text: str = ""
    token_ids: list[int] = []
    finish_reason: str | None = None
    prompt_token_ids: list[int] | None = None  # after image expansion, as the engine saw them
    image_tokens: int | None = None  # of those, the ones the engine's processor put in for images
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # of ``prompt_tokens``, those the engine's prefix cache held (when it says)
    logprobs: list[TokenLogprob] | None = None  # one per token of ``text`` (when asked)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # one per prompt token, the first None


class Engine(Protocol):
    """One served model's engine (embedded or remote)."""

    @property
    def ready(self) -> bool: ...

    @property
    def local_ready(self) -> bool:
        """Every server this gateway runs itself is up (GET /ready)."""
        ...

    async def recheck(self) -> bool:
        """Whether it is ready after looking again now. A request that finds it not ready asks this before
        it is refused: the engine may have come up since the last periodic look (another worker of this
        gateway, or a client's health check, may have seen it already)."""
        ...

    @property
    def max_model_len(self) -> int | None:
        """The context length the engine reports (``/v1/models``), once it is up; None until known."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """Stream deltas; closing the iterator early aborts the request in the engine."""
        ...


Probe = Literal["up", "down", "refused"]


class Server(Protocol):
    """One engine server of a pool (``vlm_gateway.engines.pool``): it speaks one protocol to one base URL.
    The pool owns health, routing and failover; a server only talks to its URL."""

    url: str  # names it in routing, logs and metrics

    async def probe(self) -> Probe:
        """Is it serving? "refused": nothing listens there (out of rotation at once); "down": it failed."""
        ...

    async def read_max_model_len(self) -> int | None:
        """Its context length, read when it comes up (None: it does not say)."""
        ...

    def generate(self, request: EngineRequest, deadline: float, total_s: float) -> AsyncIterator[EngineDelta]:
        """Stream the request's deltas from this server, within ``deadline`` (``time.monotonic()``;
        ``total_s`` is the whole limit, for the message). Raises ``EngineUnreachable`` when the connection
        is refused, ``EngineDown`` when it is lost or the server answers 503 (the pool fails over if
        nothing was yielded yet), ``EngineTimeout``, ``EngineRejected`` (the request's fault) or
        ``EngineCrashed``. Closing the iterator early aborts the request on the server."""
        ...
