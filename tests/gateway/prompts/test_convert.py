"""Request messages → template variables, and markers written into text."""

from __future__ import annotations

from vlm_gateway.prompts.convert import count_images, to_template_messages, write_markers_into_text
from vlm_gateway.prompts.families import get_family
from vlm_gateway.schemas.openai import ChatMessage, ImagePart, ImageUrl, ImageUrlPart, TextPart


def test_template_variables() -> None:
    messages = [
        ChatMessage("developer", "rules"),
        ChatMessage("user", [ImageUrlPart(ImageUrl("https://x/y.png")), TextPart("what?"), ImagePart()]),
        ChatMessage("assistant", None),
    ]
    assert to_template_messages(messages) == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}, {"type": "image"}]},
        {"role": "assistant", "content": ""},
    ]
    assert count_images(messages) == 2


def test_markers_written_into_text() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"}, {"type": "text", "text": "B"}]},
        {"role": "assistant", "content": "plain"},
        {"role": "user", "content": [{"type": "image"}]},
    ]
    phi = write_markers_into_text(messages, get_family("phi3_5_vision"))
    assert [m["content"] for m in phi] == ["<|image_1|>\nA\nB", "plain", "<|image_2|>\n"]
    fastvlm = write_markers_into_text(messages, get_family("fastvlm"))
    assert fastvlm[0]["content"] == "<image>\nA\nB"
    assert messages[0]["content"][0] == {"type": "text", "text": "A"}  # input untouched
