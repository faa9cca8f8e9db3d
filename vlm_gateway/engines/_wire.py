"""What every HTTP engine client shares: sending a request, reading server-sent events, and an engine's error
answer as one of ``vlm_gateway.engines.errors`` by whose fault it is."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import msgspec
from aiohttp.http_exceptions import LineTooLong

from vlm_gateway.engines import EngineDelta
from vlm_gateway.engines.errors import (
    EngineCacheMiss,
    EngineCrashed,
    EngineDown,
    EngineError,
    EngineRejected,
    EngineTimeout,
    EngineUnreachable,
)

# vLLM's messages for a prompt that does not fit: "The decoder prompt (length N) is longer than the maximum
# model length of M", "This model's maximum context length is M tokens...", "Input length (N) exceeds
# model's maximum context length (M)".
_CONTEXT_MESSAGE = re.compile(r"maximum (?:context|model) length", re.IGNORECASE)
# vLLM's message for an image sent by its uuid alone that its processor cache no longer holds (a 400):
# "Cache miss for image at index 0 but data is not provided."
_CACHE_MISS = re.compile(r"cache miss for \w+ at index \d+", re.IGNORECASE)


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    """An answer's ``usage`` (OpenAI's and vLLM's shape). ``prompt_tokens_details.cached_tokens``: prompt
    tokens the engine's prefix cache already held (vLLM: with ``--enable-prompt-tokens-details``)."""

    prompt_tokens: int = 0
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None

    def delta(self) -> EngineDelta:
        details = self.prompt_tokens_details
        return EngineDelta(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                           cached_tokens=details.cached_tokens if details is not None else None)


class ErrorBody(msgspec.Struct):
    message: str = "engine error"
    code: int | str | None = None  # vLLM: the HTTP status it would have answered
    param: str | None = None  # vLLM: the field it refused, by its own name (a SamplingParams field, …)


class _ErrorResponse(msgspec.Struct):
    error: ErrorBody | None = None
    detail: object = None


_DECODE_ERROR = msgspec.json.Decoder(_ErrorResponse)


async def post(session: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str],
               timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
    """POST ``data`` and return the response once its headers are in (use it as ``async with``).

    A server closes a connection that stood idle for its keep-alive time (uvicorn, hence vLLM: 5 s). A
    request sent on it at that moment fails with ``ServerDisconnectedError`` before any answer: the server
    read none of it. So it is sent once more (the pool then has a live connection or opens one). The
    gateway's connector drops idle connections before servers do (``ENGINE_KEEPALIVE_S`` in
    ``vlm_gateway/app.py``), which makes this rare; an engine that really went away fails the second
    try too, and the pool fails over."""
    try:
        return await session.post(url, data=data, headers=headers, timeout=timeout)
    except aiohttp.ServerDisconnectedError:
        return await session.post(url, data=data, headers=headers, timeout=timeout)


MAX_EVENT_BYTES = 1 << 26  # one event's line: vLLM's first chunk holds the prompt's ids (a long prompt: MBs)


async def sse_data(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of an event stream, up to ``[DONE]``. A body that ends before it (an engine,
    or a proxy before it, that closed the stream early) is ``EngineDown``: the answer is cut short."""
    while raw := await _line(stream):
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            await stream.read()  # to the end of the body, so the connection goes back to the pool for reuse
            return
        yield data
    raise EngineDown("the engine's stream ended before its end ([DONE])")


async def _line(stream: aiohttp.StreamReader) -> bytes:
    try:
        return await stream.readline(max_line_length=MAX_EVENT_BYTES)
    except LineTooLong as exc:
        raise EngineCrashed(f"the engine sent an event over {MAX_EVENT_BYTES} bytes") from exc


@contextlib.contextmanager
def as_engine_errors(total_s: float) -> Iterator[None]:
    """aiohttp's and msgspec's failures of one engine request as the engine errors they are."""
    try:
        yield
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:  # never connected
        raise EngineUnreachable(f"engine connection failed: {exc}") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:  # it went away mid-request
        raise EngineDown(f"engine connection lost: {type(exc).__name__}: {exc}") from exc
    except TimeoutError as exc:
        raise EngineTimeout(f"the request took longer than {total_s:g} s") from exc
    except msgspec.DecodeError as exc:  # (an answer that is not the engine's: a proxy's page, a cut line)
        raise EngineCrashed(f"the engine's answer could not be read: {exc}") from exc


async def once_more_before_output(
        first: AsyncIterator[EngineDelta],
        again: Callable[[EngineCrashed], AsyncIterator[EngineDelta] | None]) -> AsyncIterator[EngineDelta]:
    """``first``'s deltas; where it fails (``EngineCrashed``) before any, those of ``again(error)`` instead
    (``None``: the error stands). Used for requests with images: vLLM's frontend keeps the images it
    processed for a request it then refused (a prompt too long once they are expanded) as if its engine had
    them, and sends them by key with the next request that has them; the engine, which never got them,
    fails that request before any output and vLLM forgets them, so the same request sent again succeeds."""
    started = False
    try:
        async with contextlib.aclosing(first) as deltas:
            async for delta in deltas:
                started = True
                yield delta
    except EngineCrashed as exc:
        retry = None if started else again(exc)
        if retry is None:
            raise
        async with contextlib.aclosing(retry) as deltas:
            async for delta in deltas:
                yield delta


def http_error(status: int, body: bytes) -> EngineError:
    """An engine's non-200 answer (OpenAI's error shape, or FastAPI's ``detail``)."""
    param = None
    try:
        parsed = _DECODE_ERROR.decode(body)
        message = parsed.error.message if parsed.error else str(parsed.detail)
        param = parsed.error.param if parsed.error else None
    except msgspec.DecodeError:
        message = body[:500].decode(errors="replace")
    return engine_error(status, message, param)


def status_of(code: int | str | None) -> int | None:
    return int(code) if isinstance(code, int) or (isinstance(code, str) and code.isdigit()) else None


def engine_error(status: int | None, message: str, param: str | None = None) -> EngineError:
    """An engine's error (its HTTP status, or the code of an error chunk; None: unknown) by whose fault it is;
    ``param``: the field it names, for a rejection."""
    if _CACHE_MISS.search(message):
        return EngineCacheMiss(message)
    if (status is None or status < 500) and _CONTEXT_MESSAGE.search(message):
        return EngineRejected(message, "context_length_exceeded")
    if status in (400, 413, 422):
        return EngineRejected(message, param=param)
    if status == 503:
        return EngineDown(message)
    return EngineCrashed(f"engine error: {message}" if status is None else f"engine answered {status}: {message}")
