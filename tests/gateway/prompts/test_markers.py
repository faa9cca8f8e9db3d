"""Placeholder helpers."""

from __future__ import annotations

from vlm_gateway.prompts.families import get_family
from vlm_gateway.prompts.markers import count_placeholders, find_reserved, placeholder


def test_placeholders() -> None:
    phi, qwen = get_family("phi3_5_vision"), get_family("qwen2_5_vl")
    assert placeholder(phi, 3) == "<|image_3|>"
    assert placeholder(qwen, 3) == "<|vision_start|><|image_pad|><|vision_end|>"
    assert count_placeholders(phi, "<|image_1|>x<|image_12|><|image|>") == 2
    assert count_placeholders(qwen, "<|vision_start|><|image_pad|><|vision_end|><|image_pad|>") == 1


def test_reserved_text() -> None:
    assert find_reserved(get_family("qwen2_5_vl"), "a <|image_pad|> b") == "<|image_pad|>"
    assert find_reserved(get_family("phi3_5_vision"), "see <|image_7|>") == "<|image_7|>"
    assert find_reserved(get_family("llava_1_5"), "an <img> tag") is None
