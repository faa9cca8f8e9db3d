"""Client of stock vLLM servers started with ``--enable-scale-out``.

The gateway has already rendered and tokenized the prompt, so it calls vLLM's token-in endpoint
``POST /inference/v1/generate`` with ``token_ids`` (the family's image placeholder token once per
image) and ``content_parts`` (the images); vLLM's own processor expands each placeholder. Output is
always streamed from the engine (``output_mode="text"``, so vLLM detokenizes); a caller that stops
iterating aborts the request at ``/inference/v1/abort_requests``.

One shared aiohttp session serves every request. Several base URLs make a pool: a request goes to the
healthy server that holds its caches, within a load bound, else to the least loaded (``vlm_gateway.routing``;
``routing = "least_loaded"``: always the least loaded). A server that refuses the connection, answers 503
or dies before the request's first output is left out and the request is sent to the next one (at most
once per server, within the request's timeout); after the first output the request fails
(``EngineCrashed``). A server is taken out of rotation by a refused connection, or by
``HEALTH_FAILURES_DOWN`` failed probes or failed requests in a row, and comes back when ``/health``
answers again. When a server comes up its context length is read from ``GET /v1/models``
(``max_model_len``). Failures are raised as ``vlm_gateway.engines.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from vlm_gateway import metrics
from vlm_gateway.engines import Candidate, EngineDelta, EngineRequest, TokenLogprob
from vlm_gateway.engines.errors import EngineCrashed, EngineDown, EngineError, EngineRejected, EngineTimeout
from vlm_gateway.routing import Routing, choose

log = logging.getLogger("vlm_gateway.engine")

HEALTH_INTERVAL_S = 2.0
HEALTH_TIMEOUT_S = 5.0
# A busy engine can be slow to answer /health: only this many failed probes in a row take it out of
# rotation. A refused connection takes it out at once.
HEALTH_FAILURES_DOWN = 3
# vLLM's messages for a prompt that does not fit: "The decoder prompt (length N) is longer than the maximum
# model length of M", "This model's maximum context length is M tokens...", "Input length (N) exceeds
# model's maximum context length (M)".
_CONTEXT_MESSAGE = re.compile(r"maximum (?:context|model) length", re.IGNORECASE)


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int | None = None


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


class _ErrorBody(msgspec.Struct):
    message: str = "engine error"
    code: int | str | None = None  # vLLM: the HTTP status it would have answered


class _Chunk(msgspec.Struct):
    """One SSE chunk of ``/inference/v1/generate`` (output_mode "text"), or its whole non-streamed
    answer (which alone carries ``prompt_logprobs``: per prompt position, token id → logprob)."""

    choices: list[_Choice] = []
    prompt_token_ids: list[int] | None = None
    usage: _Usage | None = None
    error: _ErrorBody | None = None
    prompt_logprobs: list[dict[int, _PromptLogprob] | None] | None = None


class _ErrorResponse(msgspec.Struct):
    error: _ErrorBody | None = None
    detail: object = None


class _ModelCard(msgspec.Struct):
    max_model_len: int | None = None


class _ModelList(msgspec.Struct):
    data: list[_ModelCard] = []


_DECODE_CHUNK = msgspec.json.Decoder(_Chunk)
_DECODE_ERROR = msgspec.json.Decoder(_ErrorResponse)
_DECODE_MODELS = msgspec.json.Decoder(_ModelList)
_ENCODE = msgspec.json.Encoder()


class _Server(msgspec.Struct):
    url: str
    healthy: bool = False
    in_flight: int = 0
    failed_probes: int = 0
    failed_requests: int = 0  # in a row
    max_model_len: int | None = None


class RemoteVLLM:
    """An engine made of one or more vLLM servers reached over HTTP."""

    def __init__(self, urls: list[str], session: aiohttp.ClientSession, *, request_timeout_s: float = 600.0,
                 routing: Routing = "affinity"):
        if not urls:
            raise ValueError("a remote engine needs at least one URL")
        self._servers = [_Server(url.rstrip("/")) for url in urls]
        self._session = session
        self._request_timeout_s = request_timeout_s
        self._routing: Routing = routing
        self._monitor: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return any(s.healthy for s in self._servers)

    @property
    def max_model_len(self) -> int | None:
        """The smallest context length the servers report (None until one has answered)."""
        return min((s.max_model_len for s in self._servers if s.max_model_len), default=None)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self._servers]

    async def start(self) -> None:
        await self._check_health()
        self._monitor = asyncio.create_task(self._watch_health(), name="vllm-health")

    async def close(self) -> None:
        if self._monitor:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor

    async def _check_health(self) -> None:
        async def probe(server: _Server) -> None:
            refused = False
            try:
                async with self._session.get(
                    server.url + "/health", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
                ) as resp:
                    ok = resp.status == 200
            except aiohttp.ClientConnectorError:
                ok, refused = False, True
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            server.failed_probes = 0 if ok else server.failed_probes + 1
            if ok:
                server.failed_requests = 0
            if ok and (not server.healthy or server.max_model_len is None):  # (re)started: read its limit
                server.max_model_len = await self._read_max_model_len(server)
            healthy = ok or (server.healthy and not refused and server.failed_probes < HEALTH_FAILURES_DOWN)
            if healthy != server.healthy:
                log.info("engine %s is %s", server.url, "up" if healthy else "down")
            server.healthy = healthy

        await asyncio.gather(*(probe(s) for s in self._servers))

    async def _read_max_model_len(self, server: _Server) -> int | None:
        try:
            async with self._session.get(
                server.url + "/v1/models", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
            ) as resp:
                models = _DECODE_MODELS.decode(await resp.read()) if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, msgspec.DecodeError):
            models = None
        limit = models.data[0].max_model_len if models and models.data else None
        if limit is None:
            log.warning("engine %s did not report max_model_len at /v1/models", server.url)
        return limit

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._check_health()

    def _pick(self, affinity: str | None, tried: set[str]) -> _Server:
        healthy = [s for s in self._servers if s.healthy and s.url not in tried]
        if not healthy:
            raise EngineDown("no engine is up for this model yet; retry shortly", retry_after_s=5)
        return choose(healthy, affinity, lambda s: s.in_flight, lambda s: s.url, self._routing)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """The request's output from one server of the pool; before its first output, a server that is
        down (``EngineDown``) hands the request to the next."""
        tried: set[str] = set()
        total = request.timeout_s or self._request_timeout_s
        deadline = time.monotonic() + total  # every attempt within the request's one time limit
        while True:
            server = self._pick(request.affinity, tried)
            started = False
            try:
                # closed (the engine request aborted) as soon as the caller stops reading
                async with contextlib.aclosing(self._generate_on(server, request, deadline, total)) as deltas:
                    async for delta in deltas:
                        started = True
                        yield delta
                server.failed_requests = 0
                return
            except EngineDown as exc:
                self._failed(server)
                if started:
                    raise EngineCrashed(f"the engine failed mid-answer: {exc.message}") from exc
                tried.add(server.url)
                if not any(s.healthy and s.url not in tried for s in self._servers):
                    raise
                metrics.FAILOVERS.inc()
                log.warning("engine %s failed before the first output (%s); trying another", server.url, exc.message)
            except EngineCrashed:
                self._failed(server)
                raise

    def _failed(self, server: _Server) -> None:
        server.failed_requests += 1
        if server.healthy and server.failed_requests >= HEALTH_FAILURES_DOWN:
            log.info("engine %s is down (%d failed requests in a row)", server.url, server.failed_requests)
            server.healthy = False

    async def _generate_on(self, server: _Server, request: EngineRequest,
                           deadline: float, total_s: float) -> AsyncIterator[EngineDelta]:
        body = {
            "request_id": request.request_id,
            "token_ids": request.token_ids,
            "sampling_params": request.sampling,
            "return_token_ids": True,
            "output_mode": "text",
            # prompt logprobs come only in a whole (non-streamed) answer
            "stream": request.sampling.prompt_logprobs is None,
            "stream_options": {"include_usage": True},
        }
        if request.images:
            body["content_parts"] = [{"type": "image_url", "url": url} for url in request.images]
        server.in_flight += 1
        finished = False
        try:
            async with self._session.post(
                server.url + "/inference/v1/generate",
                data=_ENCODE.encode(body),
                headers={"Content-Type": "application/json", "X-Request-Id": request.request_id},
                timeout=aiohttp.ClientTimeout(total=max(deadline - time.monotonic(), 0.001), sock_connect=5),
            ) as resp:
                if resp.status != 200:
                    raise _http_error(resp.status, await resp.read())
                chunks = _sse_chunks(resp.content) if body["stream"] else _whole(resp)
                async for chunk in chunks:
                    if chunk.error is not None:
                        raise _engine_error(_status(chunk.error.code), chunk.error.message)
                    for delta in _deltas(chunk):
                        yield delta
                finished = True
        except aiohttp.ClientConnectorError as exc:  # refused: out of rotation until /health answers
            server.healthy = False
            raise EngineDown(f"engine connection failed: {exc}") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:  # it went away mid-request
            raise EngineDown(f"engine connection lost: {type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            raise EngineTimeout(f"the request took longer than {total_s:g} s") from exc
        finally:
            server.in_flight -= 1
            if not finished:
                await self._abort(server, request.request_id)

    async def _abort(self, server: _Server, request_id: str) -> None:
        # vLLM names the request "generate-tokens-<id>" internally; send both forms.
        ids = [request_id, f"generate-tokens-{request_id}"]
        try:
            async with self._session.post(
                server.url + "/inference/v1/abort_requests",
                data=_ENCODE.encode({"request_ids": ids}),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=5),
            ):
                pass
        except (TimeoutError, aiohttp.ClientError):
            log.warning("could not abort request %s on %s", request_id, server.url)


async def _sse_chunks(stream: aiohttp.StreamReader) -> AsyncIterator[_Chunk]:
    async for raw in stream:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
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
    its alternatives by rank."""
    if chunk.prompt_logprobs is None or chunk.prompt_token_ids is None:
        return None
    out: list[TokenLogprob | None] = []
    for token_id, position in zip(chunk.prompt_token_ids, chunk.prompt_logprobs, strict=False):
        own = position.get(token_id) if position else None
        if position is None or own is None:
            out.append(None)
            continue
        ranked = sorted((p for i, p in position.items() if i != token_id), key=lambda p: p.rank or 0)
        out.append(TokenLogprob(own.decoded_token or "", own.logprob, None,
                                [Candidate(p.decoded_token or "", p.logprob) for p in ranked]))
    return out


def _deltas(chunk: _Chunk) -> list[EngineDelta]:
    prompt_logprobs = _prompt_logprobs(chunk)
    out = [
        EngineDelta(
            index=c.index,
            text=c.text,
            token_ids=c.token_ids or [],
            finish_reason=c.finish_reason,
            prompt_token_ids=chunk.prompt_token_ids,
            logprobs=_logprobs(c),
            prompt_logprobs=prompt_logprobs,
        )
        for c in chunk.choices
    ]
    if chunk.usage is not None:
        out.append(EngineDelta(prompt_tokens=chunk.usage.prompt_tokens,
                               completion_tokens=chunk.usage.completion_tokens))
    return out


def _http_error(status: int, body: bytes) -> EngineError:
    try:
        parsed = _DECODE_ERROR.decode(body)
        message = parsed.error.message if parsed.error else str(parsed.detail)
    except msgspec.DecodeError:
        message = body[:500].decode(errors="replace")
    return _engine_error(status, message)


def _status(code: int | str | None) -> int | None:
    return int(code) if isinstance(code, int) or (isinstance(code, str) and code.isdigit()) else None


def _engine_error(status: int | None, message: str) -> EngineError:
    """vLLM's error (its HTTP status, or the code of an error chunk; None: unknown) by whose fault it is."""
    if (status is None or status < 500) and _CONTEXT_MESSAGE.search(message):
        return EngineRejected(message, "context_length_exceeded")
    if status in (400, 413, 422):
        return EngineRejected(message)
    if status == 503:
        return EngineDown(message)
    return EngineCrashed(f"engine error: {message}" if status is None else f"engine answered {status}: {message}")
