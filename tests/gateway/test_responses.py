"""Non-streamed response shaping from engine deltas."""

from __future__ import annotations

import msgspec

from tests.gateway.test_streaming import SCRIPT, prepared, scripted
from vlm_gateway.engines import EngineDelta
from vlm_gateway.responses import chat_completion, completion


async def test_chat_completion_joins_text_and_counts_image_tokens() -> None:
    out = await chat_completion(prepared(), scripted(SCRIPT), return_token_ids=True)
    assert out.object == "chat.completion" and out.id == "chatcmpl-1" and out.model == "m"
    assert out.choices[0].message.content == "Hello" and out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (600, 2, 602)
    assert out.usage.prompt_tokens_details.image_tokens == 597
    assert out.prompt_token_ids == list(range(600))


async def test_completion_with_n_choices_in_index_order() -> None:
    script = [EngineDelta(1, "b"), EngineDelta(0, "a", finish_reason="stop"),
              EngineDelta(1, "", finish_reason="length"), EngineDelta(prompt_tokens=4, completion_tokens=2)]
    out = await completion(prepared(n=2, images=0), scripted(script), return_token_ids=False)
    assert [(c.index, c.text, c.finish_reason) for c in out.choices] == [(0, "a", "stop"), (1, "b", "length")]
    assert out.prompt_token_ids is msgspec.UNSET
