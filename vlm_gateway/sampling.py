"""OpenAI sampling fields → the engine's SamplingParams."""

from __future__ import annotations

from vlm_gateway.engines import SamplingParams
from vlm_gateway.errors import InvalidRequest
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
    return stops or None


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


def _sampling(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, stop_token_ids: list[int],
              structured: dict | None = None) -> SamplingParams:
    """The fields chat and completions share. ``stop_token_ids`` are the family's end tokens; with
    ``ignore_eos`` they are ignored too (they are EOS in all but name)."""
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        n=req.n,
        stop=_stops(req.stop),
        stop_token_ids=None if req.ignore_eos else stop_token_ids or None,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        structured_outputs=structured,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
    )


def chat_sampling(req: ChatCompletionRequest, stop_token_ids: list[int]) -> SamplingParams:
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
    params = _sampling(req, req.max_completion_tokens or req.max_tokens, stop_token_ids,
                       _structured(req.response_format))
    if req.logprobs:
        params.logprobs = req.top_logprobs or 0
    return params


def completion_sampling(req: CompletionRequest, stop_token_ids: list[int]) -> SamplingParams:
    """Completions' ``logprobs`` is the number of alternatives (0: the chosen tokens' own); with
    ``echo`` the prompt's tokens get theirs too."""
    params = _sampling(req, req.max_tokens, stop_token_ids)
    params.logprobs = req.logprobs
    if req.echo and req.logprobs is not None:
        params.prompt_logprobs = req.logprobs
    return params
