"""OpenAI sampling fields → the engine's SamplingParams, on top of the model's own defaults.

A checkpoint's ``generation_config.json`` sets default sampling (Qwen2.5-VL: temperature 0.1, top_k 1,
top_p 0.001, repetition_penalty 1.05). vLLM applies those on its OpenAI routes but not on the token-in
endpoint the gateway calls. With ``generation_config = true`` in a model's settings the gateway applies
them itself (``SamplingDefaults``, read once per model, the fields vLLM reads): a field the request
leaves out takes the model's value. Off by default: OpenAI's defaults (temperature 1), which the
project's random-weight test models need to stop by themselves.
"""

from __future__ import annotations

import json

import msgspec

from vlm_gateway.engines import SamplingParams
from vlm_gateway.errors import InvalidRequest
from vlm_gateway.prompts.families import checkpoint_file
from vlm_gateway.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    ResponseFormat,
)


def _stops(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > 4:
        raise InvalidRequest("at most 4 stop sequences are allowed", param="stop")
    if "" in stops:
        raise InvalidRequest("stop sequences cannot be empty strings", param="stop")
    return stops or None


MAX_TOKEN_ID_DIGITS = 9  # no vocabulary has a billion tokens (and the engine's encoder stops at 64 bits)


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's token-id strings as ids. Ids past the model's vocabulary are the engine's to refuse (it
    knows the vocabulary size; a 400 naming ``logit_bias`` either way)."""
    if not bias:
        return None
    ids: dict[int, float] = {}
    for token, value in bias.items():
        if not token.isascii() or not token.isdigit() or len(token) > MAX_TOKEN_ID_DIGITS:
            raise InvalidRequest(f"logit_bias keys are token ids; {token[:32]!r} is not one", param="logit_bias")
        ids[int(token)] = value
    return ids


def _structured(fmt: ResponseFormat | None) -> dict | None:
    """vLLM's structured decoding. Compact JSON (no free whitespace between tokens): fewer tokens, and a
    weak model cannot spend its whole budget on indentation."""
    if isinstance(fmt, JsonObjectFormat):
        return {"json_object": True, "disable_any_whitespace": True}
    if isinstance(fmt, JsonSchemaFormat):
        if fmt.json_schema.schema is None:
            raise InvalidRequest("response_format.json_schema.schema is required",
                                 param="response_format.json_schema.schema")
        return {"json": fmt.json_schema.schema, "disable_any_whitespace": True}
    return None


class SamplingDefaults(msgspec.Struct, frozen=True):
    """A model's default sampling (its ``generation_config.json``, the fields vLLM reads from it)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = None  # its max_new_tokens


NO_DEFAULTS = SamplingDefaults()


def load_defaults(checkpoint: str) -> SamplingDefaults:
    """The checkpoint's ``generation_config.json`` defaults (none when it has no such file)."""
    try:
        config = json.loads(checkpoint_file(checkpoint, "generation_config.json").read_text())
    except (FileNotFoundError, ValueError):
        return NO_DEFAULTS
    if "max_new_tokens" in config:
        config["max_tokens"] = config["max_new_tokens"]
    fields = {f: config[f] for f in SamplingDefaults.__struct_fields__ if config.get(f) is not None}
    return msgspec.convert(fields, SamplingDefaults)


GREEDY_TOP_P = 1e-9  # OpenAI's top_p 0 (the most likely token only): vLLM wants more than 0


def _top_p(value: float | None) -> float | None:
    return GREEDY_TOP_P if value == 0 else value


def _or(value, default):
    return default if value is None else value


def _sampling(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, stop_token_ids: list[int],
              defaults: SamplingDefaults, structured: dict | None = None) -> SamplingParams:
    """The fields chat and completions share. ``stop_token_ids`` are the family's end tokens; with
    ``ignore_eos`` they are ignored too (they are EOS in all but name). Combinations the engine would
    refuse without naming a field are refused here, naming it."""
    params = SamplingParams(
        max_tokens=_or(max_tokens, defaults.max_tokens),
        temperature=_or(req.temperature, defaults.temperature),
        top_p=_top_p(_or(req.top_p, defaults.top_p)),
        top_k=_or(req.top_k, defaults.top_k),
        min_p=_or(req.min_p, defaults.min_p),
        repetition_penalty=_or(req.repetition_penalty, defaults.repetition_penalty),
        n=req.n,
        stop=_stops(req.stop),
        stop_token_ids=None if req.ignore_eos else stop_token_ids or None,
        seed=req.seed,
        presence_penalty=_or(req.presence_penalty, defaults.presence_penalty),
        frequency_penalty=_or(req.frequency_penalty, defaults.frequency_penalty),
        logit_bias=_logit_bias(req.logit_bias),
        structured_outputs=structured,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
    )
    if req.stream_options is not None and not req.stream:  # as OpenAI and vLLM refuse it
        raise InvalidRequest("stream_options is only allowed with stream: true", param="stream_options")
    # n > 1 at temperature 0 is n greedy answers, as OpenAI takes it (vLLM's client asks for its equal)
    if params.max_tokens is not None and params.min_tokens > params.max_tokens:
        raise InvalidRequest(f"min_tokens ({params.min_tokens}) is more than max_tokens ({params.max_tokens})",
                             param="min_tokens")
    return params


def chat_sampling(req: ChatCompletionRequest, stop_token_ids: list[int],
                  defaults: SamplingDefaults = NO_DEFAULTS) -> SamplingParams:
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
    params = _sampling(req, req.max_completion_tokens or req.max_tokens, stop_token_ids, defaults,
                       _structured(req.response_format))
    if req.logprobs:
        params.logprobs = req.top_logprobs or 0
    return params


def completion_sampling(req: CompletionRequest, stop_token_ids: list[int],
                        defaults: SamplingDefaults = NO_DEFAULTS) -> SamplingParams:
    """Completions' ``logprobs`` is the number of alternatives (0: the chosen tokens' own); with
    ``echo`` the prompt's tokens get theirs too. ``suffix`` and ``best_of`` (OpenAI's legacy fields,
    which vLLM does not serve either) are refused rather than silently dropped."""
    if req.suffix:
        raise InvalidRequest("suffix (text to insert before) is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidRequest("best_of is not supported: ask for n choices (with logprobs to rank them)",
                             param="best_of")
    max_tokens = req.max_tokens
    if max_tokens == 0:  # OpenAI's way to score a prompt: vLLM generates at least one token, not shown
        if not req.echo:
            raise InvalidRequest("max_tokens 0 generates nothing: it goes with echo (the prompt and, with "
                                 "logprobs, its logprobs)", param="max_tokens")
        max_tokens = 1
    params = _sampling(req, max_tokens, stop_token_ids, defaults)
    params.logprobs = req.logprobs
    if req.echo and req.logprobs is not None:
        params.prompt_logprobs = req.logprobs
    return params
