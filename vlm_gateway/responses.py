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
)


class Collected(msgspec.Struct):
    texts: dict[int, list[str]]
    finish: dict[int, str | None]


def finish_reason(raw: str | None) -> str | None:
    """vLLM's reasons beyond OpenAI's two (abort, error, repetition) read as ``stop``."""
    if raw is None:
        return None
    return raw if raw in ("stop", "length") else "stop"


async def collect(prepared: Prepared, deltas: AsyncIterator[EngineDelta]) -> Collected:
    """Each choice's text and finish reason (usage is in ``prepared.tally`` once the stream ends)."""
    n = prepared.engine_request.sampling.n
    texts: dict[int, list[str]] = {i: [] for i in range(n)}
    finish: dict[int, str | None] = {i: None for i in range(n)}
    async for delta in deltas:
        texts.setdefault(delta.index, []).append(delta.text)
        if delta.finish_reason is not None:
            finish[delta.index] = finish_reason(delta.finish_reason)
    return Collected(texts, finish)


def _prompt_ids(prepared: Prepared, return_token_ids: bool) -> list[int] | msgspec.UnsetType:
    ids = prepared.tally.prompt_ids
    return ids if return_token_ids and ids else UNSET


async def chat_completion(prepared: Prepared, deltas: AsyncIterator[EngineDelta],
                          return_token_ids: bool) -> ChatCompletion:
    out = await collect(prepared, deltas)
    return ChatCompletion(
        id=prepared.response_id,
        created=prepared.created,
        model=prepared.model_name,
        choices=[ChatChoice(i, AssistantMessage("".join(parts)), out.finish[i])
                 for i, parts in sorted(out.texts.items())],
        usage=prepared.tally.usage(),
        prompt_token_ids=_prompt_ids(prepared, return_token_ids),
    )


async def completion(prepared: Prepared, deltas: AsyncIterator[EngineDelta],
                     return_token_ids: bool) -> Completion:
    out = await collect(prepared, deltas)
    return Completion(
        id=prepared.response_id,
        created=prepared.created,
        model=prepared.model_name,
        choices=[CompletionChoice(i, "".join(parts), out.finish[i]) for i, parts in sorted(out.texts.items())],
        usage=prepared.tally.usage(),
        prompt_token_ids=_prompt_ids(prepared, return_token_ids),
    )
