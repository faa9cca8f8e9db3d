"""``Tally``: a request's token usage, counted once.

``pipeline.generate`` hands it every engine delta; the usage-only deltas stop there. The JSON body
(``responses``), the SSE usage chunk (``streaming``) and the permit's tokens/min account all read the
same numbers from it.
"""

from __future__ import annotations

import msgspec

from vlm_gateway.engines import EngineDelta
from vlm_gateway.schemas.openai import PromptTokensDetails, Usage


class Tally(msgspec.Struct):
    sent_tokens: int  # the prompt ids sent, one placeholder per image
    image_count: int
    prompt_tokens: int | None = None  # as the engine counted them, images expanded
    completion_tokens: int = 0
    prompt_ids: list[int] | None = None  # the prompt as the engine saw it (first delta)
    image_tokens: int | None = None  # as the engine placed them (first delta), when it says
    cached_tokens: int = 0  # of the prompt tokens, those the engine's prefix cache held (when it says)
    streamed: int = 0  # token ids the engine sent so far (what was spent where no usage ever comes)

    def take(self, delta: EngineDelta) -> bool:
        """Record what ``delta`` says about tokens; True when that is all it carries."""
        self.streamed += len(delta.token_ids)
        if delta.prompt_token_ids is not None and self.prompt_ids is None:
            self.prompt_ids = delta.prompt_token_ids
        if delta.image_tokens is not None and self.image_tokens is None:
            self.image_tokens = delta.image_tokens
        if delta.prompt_tokens is not None:  # one per engine stream (several prompts: several)
            self.prompt_tokens = (self.prompt_tokens or 0) + delta.prompt_tokens
            self.completion_tokens += delta.completion_tokens or 0
            self.cached_tokens += delta.cached_tokens or 0
            return True
        return False

    @property
    def prompt(self) -> int:
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        return len(self.prompt_ids) if self.prompt_ids is not None else self.sent_tokens

    @property
    def total(self) -> int:
        return self.prompt + self.completion_tokens

    @property
    def spent(self) -> int:
        """What counts against tokens/min: the engine's usage; where it never came (the client left, the
        engine failed mid-answer), the prompt and the tokens sent so far; 0 where the engine sent nothing."""
        if self.prompt_tokens is not None:
            return self.total
        return self.prompt + self.streamed if self.prompt_ids is not None or self.streamed else 0

    def usage(self) -> Usage:
        """OpenAI's usage: ``image_tokens`` is what the engine put in for the images (where it does not say:
        how far it expanded the prompt, each image's placeholder taken as one token)."""
        prompt = self.prompt
        if not self.image_count:
            image_tokens = 0
        elif self.image_tokens is not None:
            image_tokens = self.image_tokens
        else:
            image_tokens = max(prompt - (self.sent_tokens - self.image_count), 0)
        return Usage(prompt, self.completion_tokens, prompt + self.completion_tokens,
                     PromptTokensDetails(cached_tokens=self.cached_tokens, image_tokens=image_tokens))
