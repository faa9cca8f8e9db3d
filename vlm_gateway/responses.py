"""Step 7 for non-streamed requests: engine deltas → one OpenAI response body."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from msgspec import UNSET

from vlm_gateway.engines import EngineDelta, TokenLogprob
from vlm_gateway.logprobs import CompletionLogprobs, chat_logprobs
from vlm_gateway.pipeline import Prepared
from vlm_gateway.schemas.openai import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
)
from vlm_gateway.tools import parse_tool_calls


class Collected(msgspec.Struct):
    """One choice's output."""

    text: list[str] = []
    finish: str | None = None
    logprobs: list[TokenLogprob] = []
    prompt_logprobs: list[TokenLogprob | None] | None = None


def finish_reason(raw: str | None) -> str | None:
    """vLLM's reasons beyond OpenAI's two (abort, error, repetition) read as ``stop``."""
    if raw is None:
        return None
    return raw if raw in ("stop", "length") else "stop"


async def collect(prepared: Prepared, deltas: AsyncIterator[EngineDelta]) -> list[Collected]:
    """Each choice's output, in index order (usage is in ``prepared.tally`` once the stream ends)."""
    out = [Collected() for _ in range(prepared.choices)]
    async for delta in deltas:
        choice = out[delta.index]
        choice.text.append(delta.text)
        if delta.logprobs:
            choice.logprobs.extend(delta.logprobs)
        if delta.prompt_logprobs is not None and choice.prompt_logprobs is None:
            choice.prompt_logprobs = delta.prompt_logprobs
        if delta.finish_reason is not None:
            choice.finish = finish_reason(delta.finish_reason)
    return out


def _prompt_ids(prepared: Prepared, return_token_ids: bool) -> list[int] | msgspec.UnsetType:
    ids = prepared.tally.prompt_ids
    return ids if return_token_ids and ids else UNSET


def assistant_message(prepared: Prepared, text: str, finish: str | None) -> tuple[AssistantMessage, str | None]:
    """The message for one choice's text, with its tool calls read out when the request has tools
    (``finish_reason`` then says ``tool_calls``, unless the token limit ended it: ``length``, and a forced
    call keeps its unfinished arguments); output that is no well-formed call stays text."""
    parsing = prepared.tool_parsing
    if parsing is None:
        return AssistantMessage(text), finish
    cut = finish == "length"
    parsed = parse_tool_calls(parsing.format, text, parsing.tools, cut)
    calls = parsed.calls[:1] if parsing.one_call else parsed.calls
    if not calls:
        return AssistantMessage(text), finish
    return AssistantMessage(parsed.content, tool_calls=calls), finish if cut else "tool_calls"


async def chat_completion(prepared: Prepared, deltas: AsyncIterator[EngineDelta],
                          return_token_ids: bool) -> ChatCompletion:
    top = prepared.sampling.logprobs
    choices = []
    for i, c in enumerate(await collect(prepared, deltas)):
        logprobs = ChoiceLogprobs(chat_logprobs(c.logprobs, top)) if top is not None else None
        message, finish = assistant_message(prepared, "".join(c.text), c.finish)
        choices.append(ChatChoice(i, message, finish, logprobs))
    return ChatCompletion(
        id=prepared.response_id,
        created=prepared.created,
        model=prepared.model_name,
        choices=choices,
        usage=prepared.tally.usage(),
        prompt_token_ids=_prompt_ids(prepared, return_token_ids),
    )


async def completion(prepared: Prepared, deltas: AsyncIterator[EngineDelta],
                     return_token_ids: bool) -> Completion:
    top, n = prepared.sampling.logprobs, prepared.sampling.n
    choices = []
    for i, c in enumerate(await collect(prepared, deltas)):
        echo = prepared.echo[i // n] if prepared.echo else None
        text = (echo.text if echo else "") + "".join(c.text)
        logprobs = None
        if top is not None:
            built = CompletionLogprobs(top)
            if echo is not None and c.prompt_logprobs is not None:
                built.take(c.prompt_logprobs, echo.first_token)
            built.take(list(c.logprobs))
            logprobs = built.all
        choices.append(CompletionChoice(i, text, c.finish, logprobs))
    return Completion(
        id=prepared.response_id,
        created=prepared.created,
        model=prepared.model_name,
        choices=choices,
        usage=prepared.tally.usage(),
        prompt_token_ids=_prompt_ids(prepared, return_token_ids),
    )
