"""Step 7 for non-streamed requests: engine deltas → one OpenAI response body."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from msgspec import UNSET

from vlm_gateway.engines import EngineDelta
from vlm_gateway.pipeline import Prepared
from vlm_gateway.schemas.openai import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    Completion,
    CompletionChoice,
    PromptTokensDetails,
    Usage,
)


class Collected(msgspec.Struct):
    texts: dict[int, list[str]]
    finish: dict[int, str | None]
    usage: Usage
    prompt_token_ids: list[int] | None


def finish_reason(raw: str | None) -> str | None:
    """vLLM's reasons beyond OpenAI's two (abort, error, repetition) read as ``stop``."""
    if raw is None:
        return None
    return raw if raw in ("stop", "length") else "stop"


def usage_of(prepared: Prepared, prompt_tokens: int | None, completion_tokens: int) -> Usage:
    """Prompt tokens as the engine counted them, images expanded; ``image_tokens`` is that expansion."""
    sent = len(prepared.engine_request.token_ids)
    prompt = prompt_tokens if prompt_tokens is not None else sent
    image_tokens = max(prompt - (sent - prepared.image_count), 0) if prepared.image_count else 0
    return Usage(prompt, completion_tokens, prompt + completion_tokens,
                 PromptTokensDetails(cached_tokens=0, image_tokens=image_tokens))


async def collect(prepared: Prepared, deltas: AsyncIterator[EngineDelta]) -> Collected:
    n = prepared.engine_request.sampling.n
    texts: dict[int, list[str]] = {i: [] for i in range(n)}
    finish: dict[int, str | None] = {i: None for i in range(n)}
    completion_tokens = 0
    prompt_tokens = None
    prompt_ids = None
    async for delta in deltas:
        if delta.prompt_token_ids is not None and prompt_ids is None:
            prompt_ids = delta.prompt_token_ids
        if delta.prompt_tokens is not None:
            prompt_tokens = delta.prompt_tokens
            completion_tokens = delta.completion_tokens or completion_tokens
            continue
        texts.setdefault(delta.index, []).append(delta.text)
        if delta.finish_reason is not None:
            finish[delta.index] = finish_reason(delta.finish_reason)
    if prompt_tokens is None and prompt_ids is not None:
        prompt_tokens = len(prompt_ids)
    return Collected(texts, finish, usage_of(prepared, prompt_tokens, completion_tokens), prompt_ids)


async def chat_completion(prepared: Prepared, deltas: AsyncIterator[EngineDelta],
                          return_token_ids: bool) -> ChatCompletion:
    out = await collect(prepared, deltas)
    return ChatCompletion(
        id=prepared.response_id,
        created=prepared.created,
        model=prepared.model_name,
        choices=[ChatChoice(i, AssistantMessage("".join(parts)), out.finish[i])
                 for i, parts in sorted(out.texts.items())],
        usage=out.usage,
        prompt_token_ids=out.prompt_token_ids if return_token_ids and out.prompt_token_ids else UNSET,
    )


async def completion(prepared: Prepared, deltas: AsyncIterator[EngineDelta],
                     return_token_ids: bool) -> Completion:
    out = await collect(prepared, deltas)
    return Completion(
        id=prepared.response_id,
        created=prepared.created,
        model=prepared.model_name,
        choices=[CompletionChoice(i, "".join(parts), out.finish[i]) for i, parts in sorted(out.texts.items())],
        usage=out.usage,
        prompt_token_ids=out.prompt_token_ids if return_token_ids and out.prompt_token_ids else UNSET,
    )
