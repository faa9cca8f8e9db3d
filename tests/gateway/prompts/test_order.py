"""Moving each message's images ahead of its text (Llama 3.2 Vision)."""

from __future__ import annotations

from vlm_gateway.prompts.families import get_family
from vlm_gateway.prompts.order import reorder_images_first
from vlm_gateway.prompts.render import render_chat
from vlm_gateway.schemas.openai import ChatMessage, ImagePart, ImageUrl, ImageUrlPart, TextPart

A, B = ImageUrlPart(ImageUrl("https://example.com/a.png")), ImagePart(url="https://example.com/b.png")


def test_images_move_first_keeping_their_order() -> None:
    messages = [
        ChatMessage("system", "be brief"),
        ChatMessage("user", [TextPart("one"), A, TextPart("two"), B]),
        ChatMessage("assistant", [TextPart("ok")]),
    ]
    out = reorder_images_first(messages)
    assert out[1].content == [A, B, TextPart("one"), TextPart("two")]
    assert out[0] is messages[0] and out[2] is messages[2]
    assert messages[1].content == [TextPart("one"), A, TextPart("two"), B]  # input untouched


def test_already_ordered_messages_are_kept() -> None:
    message = ChatMessage("user", [A, TextPart("what?")])
    assert reorder_images_first([message])[0] is message


def test_pipeline_order_for_llama_3_2_vision() -> None:
    family = get_family("llama3_2_vision")
    messages = [ChatMessage("user", [TextPart("Here is a photo of my desk:"), A])]
    assert family.images_before_text
    text = render_chat(family, reorder_images_first(messages)).text
    assert "<|image|>Here is a photo of my desk:<|eot_id|>" in text
    # render_chat itself renders what it is given
    assert "Here is a photo of my desk:<|image|>" in render_chat(family, messages).text


def test_strings_to_parts_keeps_llava_string_text() -> None:
    from vlm_gateway.prompts.families import get_family
    from vlm_gateway.prompts.order import strings_to_parts
    from vlm_gateway.prompts.render import render_chat

    llava = get_family("llava_1_5")
    assert llava.string_content_as_parts
    messages = [ChatMessage("user", "Hello there")]
    # rendered as given, the official template drops string content ...
    assert render_chat(llava, messages).text == "USER: ASSISTANT:"
    # ... so the request pipeline turns it into a text part first
    assert render_chat(llava, strings_to_parts(messages)).text == "USER: Hello there ASSISTANT:"
    assert strings_to_parts([ChatMessage("user", [TextPart("x")])])[0].content == [TextPart("x")]
