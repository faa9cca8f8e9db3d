"""render_chat: request messages → a family's prompt, the path real chat requests take."""

from __future__ import annotations

from datetime import datetime

import pytest

from vlm_gateway.errors import InvalidRequest, PromptRefused
from vlm_gateway.prompts.families import get_family, load_families
from vlm_gateway.prompts.render import RenderedPrompt, render_chat
from vlm_gateway.schemas.openai import ChatMessage, ImagePart, ImageUrl, ImageUrlPart, TextPart

URL_IMAGE = ImageUrlPart(ImageUrl("https://example.com/cat.png", detail="low"))
HF_IMAGE = ImagePart()
NOW = datetime(2025, 1, 15, 12)


def test_developer_is_system() -> None:
    family = get_family("qwen2_5_vl")
    text = render_chat(family, [ChatMessage("developer", "Be terse."), ChatMessage("user", "hi")]).text
    assert text == ("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_none_content_is_empty() -> None:
    family = get_family("phi3_5_vision")
    messages = [ChatMessage("user", "hi"), ChatMessage("assistant", None), ChatMessage("user", "again")]
    assert render_chat(family, messages).text == (
        "<|user|>\nhi<|end|>\n<|assistant|>\n<|end|>\n<|user|>\nagain<|end|>\n<|assistant|>\n")


@pytest.mark.parametrize("name", sorted(load_families()))
def test_both_image_part_forms_count_in_order(name: str) -> None:
    family = get_family(name)
    messages = [ChatMessage("user", [URL_IMAGE, TextPart("and"), HF_IMAGE, TextPart("compare")])]
    prompt = render_chat(family, messages)
    assert isinstance(prompt, RenderedPrompt) and prompt.image_count == 2


def test_phi_markers_number_across_the_conversation() -> None:
    family = get_family("phi3_5_vision")
    messages = [
        ChatMessage("user", [URL_IMAGE, TextPart("a"), TextPart("b")]),
        ChatMessage("assistant", "ok"),
        ChatMessage("user", [TextPart("c"), HF_IMAGE, URL_IMAGE]),
    ]
    assert render_chat(family, messages).text == (
        "<|user|>\n<|image_1|>\na\nb<|end|>\n<|assistant|>\nok<|end|>\n"
        "<|user|>\n<|image_2|>\n<|image_3|>\nc<|end|>\n<|assistant|>\n")


def test_no_generation_prompt() -> None:
    family = get_family("gemma3")
    text = render_chat(family, [ChatMessage("user", " hi ")], add_generation_prompt=False).text
    assert text == "<bos><start_of_turn>user\nhi<end_of_turn>\n"


def test_injected_and_default_date() -> None:
    family = get_family("llama3_2_vision")
    messages = [ChatMessage("user", "hi")]
    assert "Today Date: 15 Jan 2025\n" in render_chat(family, messages, now=NOW).text
    assert f"Today Date: {datetime.now():%d %b %Y}\n" in render_chat(family, messages).text


def test_unicode_is_kept() -> None:
    text = "Décris これ Что 🐱\u00a0"
    family = get_family("llama4")
    assert render_chat(family, [ChatMessage("user", [HF_IMAGE, TextPart(text)])]).text.endswith(
        f"<|image|>{text}<|eot|><|header_start|>assistant<|header_end|>\n\n")


def test_gemma_refuses_non_alternating_roles() -> None:
    family = get_family("gemma3")
    with pytest.raises(PromptRefused, match="must alternate") as refused:
        render_chat(family, [ChatMessage("assistant", "hello"), ChatMessage("user", "hi")])
    assert refused.value.status == 400 and refused.value.param == "messages"


@pytest.mark.parametrize("name", sorted(load_families()))
def test_text_holding_an_image_marker_is_refused(name: str) -> None:
    family = get_family(name)
    marker = family.image_placeholder.replace("{n}", "1")
    with pytest.raises(InvalidRequest, match="reserves for images") as refused:
        render_chat(family, [ChatMessage("user", [TextPart("look: "), TextPart(f"{marker} here")])])
    assert refused.value.param == "messages[0].content"


def test_template_dropping_an_image_is_refused() -> None:
    family = get_family("llama4")  # system text only: its images have nowhere to go
    messages = [ChatMessage("system", [HF_IMAGE, TextPart("sys")]), ChatMessage("user", "hi")]
    with pytest.raises(InvalidRequest, match="places 0 of the request's 1 images"):
        render_chat(family, messages)


def test_system_parts_text() -> None:
    family = get_family("llama3_2_vision")
    messages = [ChatMessage("system", [TextPart("  be "), TextPart("brief ")]), ChatMessage("user", "hi")]
    assert "Today Date: 15 Jan 2025\n\nbe brief<|eot_id|>" in render_chat(family, messages, now=NOW).text


def test_empty_conversation_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="at least one"):
        render_chat(get_family("qwen2_5_vl"), [])


def test_the_same_question_about_another_image_is_rendered_once(monkeypatch) -> None:
    from vlm_gateway.prompts import render

    family = get_family("qwen2_5_vl")
    question = f"What is this? {datetime.now().timestamp()}"  # not rendered by another test
    compiled = []
    real = render.get_template
    monkeypatch.setattr(render, "get_template", lambda *a: compiled.append(a) or real(*a))
    first = render_chat(family, [ChatMessage("user", [URL_IMAGE, TextPart(question)])])
    other_image = ImageUrlPart(ImageUrl("https://example.com/dog.png"))
    assert render_chat(family, [ChatMessage("user", [other_image, TextPart(question)])]) == first
    assert len(compiled) == 1
    render_chat(family, [ChatMessage("user", [URL_IMAGE, TextPart(question + "?")])])  # another question
    render_chat(family, [ChatMessage("user", [URL_IMAGE, TextPart(question)])], add_generation_prompt=False)
    assert len(compiled) == 3


def test_a_kept_rendering_follows_the_date(monkeypatch) -> None:
    from vlm_gateway.prompts import render

    today = [datetime(2025, 1, 15, 23, 59)]
    monkeypatch.setattr(render, "strftime_at", lambda now: lambda fmt: (now or today[0]).strftime(fmt))
    family = get_family("llama3_2_vision")
    messages = [ChatMessage("user", f"hi {datetime.now().timestamp()}")]
    assert "Today Date: 15 Jan 2025\n" in render_chat(family, messages).text
    assert "Today Date: 15 Jan 2025\n" in render_chat(family, messages).text
    today[0] = datetime(2025, 1, 16, 0, 1)
    assert "Today Date: 16 Jan 2025\n" in render_chat(family, messages).text
    assert "Today Date: 15 Jan 2025\n" in render_chat(family, messages, now=NOW).text


def test_a_refused_conversation_is_refused_every_time() -> None:
    family = get_family("qwen2_5_vl")
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            render_chat(family, [ChatMessage("user", "look: <|image_pad|>")])


def test_renderings_are_kept_apart_by_every_value_templates_print() -> None:
    from vlm_gateway.schemas.openai import FunctionCall, ToolCall

    family = get_family("qwen2_5_vl")

    def with_arguments(arguments: str) -> str:
        call = ToolCall("call_1", FunctionCall("lookup", arguments))
        return render_chat(family, [ChatMessage("user", "go"), ChatMessage("assistant", None, tool_calls=[call])]).text

    texts = [with_arguments(a) for a in ('{"x": null}', '{"x": NaN}', '{"x": 1}', '{"x": 1.0}', '{"x": "1"}')]
    assert len(set(texts)) == 5, texts
