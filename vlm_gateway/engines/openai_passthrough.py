"""One engine server of the OpenAI pass-through kind: any OpenAI-compatible server (stock vLLM's
``/v1/chat/completions``, SGLang, a hosted API).

The gateway has already authenticated, limited and loaded/sized the images; this server renders the
prompt itself. A chat request goes to ``POST {url}/chat/completions`` with the client's messages (after the
family's reshaping, images as data URIs); a completions request goes to ``POST {url}/completions`` with the
gateway's token ids as the prompt (text only: images need the server's own chat template). Output is
streamed when the client streams, else one whole answer (``EngineRequest.stream``). The gateway's sampling
parameters are mapped to OpenAI's names (vLLM's structured outputs to ``response_format`` where OpenAI
has one); vLLM-only extras are sent only when asked for.

Usage comes from the stream's last chunk (``stream_options.include_usage``) or the whole answer. A server
that sends none gets an estimate: the gateway's own prompt length (one placeholder per image, so it
undercounts image tokens) and one completion token per piece of text (servers stream one token per chunk;
a whole answer counts as one).

There is no abort endpoint: closing the iterator early closes the HTTP response, and OpenAI-compatible
servers abort a request whose client went away. Failures are raised as ``vlm_gateway.engines.errors``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

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
from vlm_gateway.engines.errors import EngineRejected

PROBE_TIMEOUT_S = 5.0
_NO_LOGPROB = -9999.0  # vLLM's sentinel when a token has no logprob


class _Top(msgspec.Struct):
    token: str
    logprob: float = _NO_LOGPROB
    bytes: list[int] | None = None


class _Position(msgspec.Struct):
    token: str
    logprob: float = _NO_LOGPROB
    bytes: list[int] | None = None
    top_logprobs: list[_Top] = []


class _ChatLogprobs(msgspec.Struct):
    content: list[_Position] | None = None


class _Delta(msgspec.Struct):
    content: str | None = None


class _ChatChoice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None  # a stream's chunk
    message: _Delta | None = None  # a whole answer
    finish_reason: str | None = None
    logprobs: _ChatLogprobs | None = None


class _ChatChunk(msgspec.Struct):
    choices: list[_ChatChoice] = []
    usage: Usage | None = None
    error: ErrorBody | None = None


class _CompletionLogprobs(msgspec.Struct):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] | None = None


class _CompletionChoice(msgspec.Struct):
    index: int = 0
    text: str | None = None
    finish_reason: str | None = None
    logprobs: _CompletionLogprobs | None = None


class _CompletionChunk(msgspec.Struct):
    choices: list[_CompletionChoice] = []
    usage: Usage | None = None
    error: ErrorBody | None = None


class _ModelCard(msgspec.Struct):
    id: str = ""
    max_model_len: int | None = None  # vLLM reports it; hosted APIs do not


class _ModelList(msgspec.Struct):
    data: list[_ModelCard] = []


_DECODE_CHAT = msgspec.json.Decoder(_ChatChunk)
_DECODE_COMPLETION = msgspec.json.Decoder(_CompletionChunk)
_DECODE_MODELS = msgspec.json.Decoder(_ModelList)
_ENCODE = msgspec.json.Encoder()


class OpenAIServer:
    """An OpenAI-compatible server at ``url`` (the base URL including ``/v1``) serving ``model``."""

    def __init__(self, url: str, session: aiohttp.ClientSession, *, model: str, api_key: str | None = None):
        self.url = url.rstrip("/")
        self._session = session
        self._model = model
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def probe(self) -> Probe:
        try:
            async with self._session.get(self.url + "/models", headers=self._auth,
                                         timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as resp:
                return "up" if resp.status == 200 else "down"
        except aiohttp.ClientConnectorError:
            return "refused"
        except (TimeoutError, aiohttp.ClientError):
            return "down"

    async def read_max_model_len(self) -> int | None:
        try:
            async with self._session.get(self.url + "/models", headers=self._auth,
                                         timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    return None
                cards = _DECODE_MODELS.decode(await resp.read()).data
        except (TimeoutError, aiohttp.ClientError, msgspec.DecodeError):
            return None
        card = next((c for c in cards if c.id == self._model), cards[0] if cards else None)
        return card.max_model_len if card else None

    async def generate(self, request: EngineRequest, deadline: float, total_s: float) -> AsyncIterator[EngineDelta]:
        """A request with images that fails before any output is sent once more (a server that is vLLM may
        have sent an image by key to an engine that never got it: see ``once_more_before_output``)."""
        first = self._generate(request, deadline, total_s)
        if not request.images:
            deltas = first
        else:
            deltas = once_more_before_output(first, lambda exc: self._generate(request, deadline, total_s))
        async with contextlib.aclosing(deltas) as deltas:
            async for delta in deltas:
                yield delta

    async def _generate(self, request: EngineRequest, deadline: float,
                        total_s: float) -> AsyncIterator[EngineDelta]:
        path, body = self._body(request)
        decoder = _DECODE_CHAT if request.chat is not None else _DECODE_COMPLETION
        usage_seen, pieces = False, 0
        with as_engine_errors(total_s):
            async with await post(
                self._session, self.url + path, _ENCODE.encode(body),
                {"Content-Type": "application/json", "X-Request-Id": request.request_id, **self._auth},
                aiohttp.ClientTimeout(total=max(deadline - time.monotonic(), 0.001), sock_connect=5),
            ) as resp:  # leaving it early closes the connection: the server aborts the request
                if resp.status != 200:
                    raise http_error(resp.status, await resp.read())
                payloads = sse_data(resp.content) if body["stream"] else _one(await resp.read())
                async for data in payloads:
                    chunk = decoder.decode(data)
                    if chunk.error is not None:
                        raise engine_error(status_of(chunk.error.code), chunk.error.message, chunk.error.param)
                    for delta in _deltas(chunk):
                        usage_seen = usage_seen or delta.prompt_tokens is not None
                        pieces += bool(delta.text)
                        yield delta
        if not usage_seen:  # an estimate (see the module docstring)
            yield EngineDelta(prompt_tokens=len(request.token_ids), completion_tokens=pieces)

    def _body(self, request: EngineRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint and body for ``request``; raises ``EngineRejected`` for what this kind cannot do."""
        if request.sampling.prompt_logprobs is not None:
            raise EngineRejected("prompt logprobs are not available from this model's engine "
                                 "(an OpenAI-compatible server)")
        body: dict[str, Any] = {"model": self._model, "stream": request.stream}  # a whole answer, or a stream
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        if request.chat is None:
            if request.images:
                raise EngineRejected("this model's engine (an OpenAI-compatible server) takes images in chat "
                                     "requests only: send them to /v1/chat/completions")
            body["prompt"] = request.token_ids  # vLLM and OpenAI accept a prompt as token ids
            return "/completions", body | _sampling(request.sampling, chat=False)
        body["messages"] = request.chat.messages
        if request.chat.tools:
            # The gateway reads tool calls out of the text itself, as for every engine: "none" keeps the
            # upstream from parsing them away while its chat template still shows the tools to the model.
            body["tools"] = request.chat.tools
            body["tool_choice"] = "none"
        return "/chat/completions", body | _sampling(request.sampling, chat=True)


def _sampling(s: SamplingParams, *, chat: bool) -> dict[str, Any]:
    """The sampling fields that are set, by OpenAI's names. ``stop_token_ids`` is never sent: the upstream
    knows its own model's stop tokens, and servers other than vLLM reject fields they do not know."""
    out: dict[str, Any] = {}
    for name in ("max_tokens", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        if (value := getattr(s, name)) is not None:
            out[name] = value
    if s.n != 1:
        out["n"] = s.n
    if s.stop:
        out["stop"] = s.stop
    if s.logit_bias:
        out["logit_bias"] = s.logit_bias
    if s.logprobs is not None:
        if not chat:
            out["logprobs"] = s.logprobs
        else:
            out["logprobs"] = True
            if s.logprobs > 0:
                out["top_logprobs"] = s.logprobs
    if (structured := s.structured_outputs) is not None:
        # OpenAI's response_format for the JSON forms of chat (vLLM-only options such as
        # disable_any_whitespace are dropped); vLLM's own field for the rest.
        if chat and "json" in structured:
            schema = structured["json"]
            schema = msgspec.json.decode(schema) if isinstance(schema, str) else schema
            out["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "output", "schema": schema, "strict": True}}
        elif chat and structured.get("json_object"):
            out["response_format"] = {"type": "json_object"}
        else:
            out["structured_outputs"] = structured
    if s.min_tokens > 0:  # vLLM extras (SGLang's too): sent only when set (by the request or the model)
        out["min_tokens"] = s.min_tokens
    for name in ("top_k", "min_p", "repetition_penalty"):
        if (value := getattr(s, name)) is not None:
            out[name] = value
    if s.ignore_eos:
        out["ignore_eos"] = True
    return out


async def _one(whole: bytes) -> AsyncIterator[bytes]:
    """A whole answer, read like a stream of one chunk."""
    yield whole


def _deltas(chunk: _ChatChunk | _CompletionChunk) -> list[EngineDelta]:
    """A chunk's deltas, one per choice that says something, then its usage."""
    if isinstance(chunk, _ChatChunk):
        deltas = [EngineDelta(c.index, ((c.delta or c.message).content if c.delta or c.message else None) or "",
                              finish_reason=c.finish_reason, logprobs=_chat_logprobs(c.logprobs))
                  for c in chunk.choices]
    else:
        deltas = [EngineDelta(c.index, c.text or "", finish_reason=c.finish_reason,
                              logprobs=_completion_logprobs(c.logprobs)) for c in chunk.choices]
    # e.g. the role-only first chunk of a chat stream
    out = [d for d in deltas if d.text or d.finish_reason or d.logprobs]
    if chunk.usage is not None:
        out.append(chunk.usage.delta())
    return out


def _chat_logprobs(logprobs: _ChatLogprobs | None) -> list[TokenLogprob] | None:
    if logprobs is None or logprobs.content is None:
        return None
    return [TokenLogprob(p.token, p.logprob, p.bytes, [Candidate(t.token, t.logprob, t.bytes) for t in p.top_logprobs])
            for p in logprobs.content]


def _completion_logprobs(logprobs: _CompletionLogprobs | None) -> list[TokenLogprob] | None:
    """The legacy form: parallel lists of tokens, their logprobs and a token → logprob map per position."""
    if logprobs is None:
        return None
    tops = logprobs.top_logprobs or []
    return [TokenLogprob(token, _NO_LOGPROB if logprob is None else logprob, None,
                         [Candidate(t, p) for t, p in (tops[i] if i < len(tops) and tops[i] else {}).items()])
            for i, (token, logprob) in enumerate(zip(logprobs.tokens, logprobs.token_logprobs, strict=False))]
