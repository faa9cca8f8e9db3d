"""The engine's token logprobs in OpenAI's two shapes.

Chat completions: ``logprobs.content[]`` of ``{token, logprob, bytes, top_logprobs[]}``. Completions
(the legacy shape): parallel lists ``tokens``, ``token_logprobs``, ``top_logprobs`` (token → logprob)
and ``text_offset`` (where each token starts in the choice's text, the echoed prompt included).
``top`` is how many alternatives the client asked for; the engine may send one more (the chosen token
when it is not among the most likely).
"""

from __future__ import annotations

from collections.abc import Callable

from vlm_gateway.engines import EngineDelta, TokenLogprob
from vlm_gateway.schemas import openai as api


def exact_bytes(delta: EngineDelta, token_bytes: Callable[[int], list[int]]) -> None:
    """The chosen tokens' ``bytes`` from their ids (``Tokenizer.token_bytes``). vLLM writes them from the
    token's text, which for a piece of a multi-byte character is empty or U+FFFD: the bytes a client joins
    to rebuild the text were lost. The chosen token heads its alternatives and gets the same bytes there.
    Deltas whose ids and entries do not pair up (an engine that sends no ids) keep the engine's."""
    entries = delta.logprobs
    if not entries or len(entries) != len(delta.token_ids):
        return
    for entry, token_id in zip(entries, delta.token_ids, strict=True):
        entry.bytes = token_bytes(token_id)
        if entry.top and entry.top[0].token == entry.token and entry.top[0].logprob == entry.logprob:
            entry.top[0].bytes = entry.bytes


def chat_logprobs(entries: list[TokenLogprob], top: int) -> list[api.TokenLogprob]:
    return [api.TokenLogprob(e.token, e.logprob, e.bytes,
                             [api.TopLogprob(c.token, c.logprob, c.bytes) for c in e.top[:top]])
            for e in entries]


class CompletionLogprobs:
    """One choice's completions logprobs, built as its tokens come (streamed: ``take`` gives each
    chunk's part, offsets counted on from the previous chunk)."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.offset = 0
        self.all = api.CompletionLogprobs([], [], [], [])

    def take(self, entries: list[TokenLogprob | None], first_token: str = "") -> api.CompletionLogprobs:
        """Add ``entries`` (``None``: a prompt token without a logprob, the first one, named
        ``first_token``); the part they make."""
        part = api.CompletionLogprobs([], [], [], [])
        for entry in entries:
            token = entry.token if entry is not None else first_token
            part.tokens.append(token)
            part.token_logprobs.append(entry.logprob if entry is not None else None)
            part.top_logprobs.append(None if entry is None else {  # the token itself, then the most likely
                entry.token: entry.logprob, **{c.token: c.logprob for c in entry.top[:self.top]}})
            part.text_offset.append(self.offset)
            self.offset += len(token)
        for name in FIELDS:
            getattr(self.all, name).extend(getattr(part, name))
        return part

    def since(self, start: int) -> api.CompletionLogprobs:
        """The entries from ``start`` on (one streamed chunk's)."""
        return api.CompletionLogprobs(*(getattr(self.all, name)[start:] for name in FIELDS))


FIELDS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
