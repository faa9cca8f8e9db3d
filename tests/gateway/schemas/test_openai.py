import msgspec
import pytest

from vlm_gateway.schemas.openai import (
    DECODE_CHAT,
    DECODE_COMPLETION,
    ImagePart,
    ImageRef,
    ImageUrlPart,
    JsonSchemaFormat,
    TextPart,
)


def test_chat_request_decodes_parts_and_ignores_unknown_fields() -> None:
    req = DECODE_CHAT.decode(msgspec.json.encode({
        "model": "m", "future_field": 1, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            {"type": "image"}]}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
    }))
    parts = req.messages[0].content
    assert [type(p) for p in parts] == [TextPart, ImageUrlPart, ImagePart]
    assert parts[1].image_url.detail == "low"
    assert isinstance(req.response_format, JsonSchemaFormat)
    assert req.response_format.json_schema.schema == {"type": "object"}
    assert req.stream_options.include_usage


@pytest.mark.parametrize("patch,param", [
    ({"temperature": 3}, "temperature"),
    ({"n": 0}, "n"),
    ({"max_tokens": "ten"}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u",
                                                                                    "detail": "ultra"}}]}]},
     "messages[0].content[0].image_url.detail"),
])
def test_wrong_values_name_the_param(patch: dict, param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **patch}
    with pytest.raises(msgspec.ValidationError) as info:
        DECODE_CHAT.decode(msgspec.json.encode(body))
    assert f"`$.{param}`" in str(info.value)


def test_completion_images_top_level_or_extra_body() -> None:
    a = DECODE_COMPLETION.decode(b'{"model":"m","prompt":"<image>hi","images":["data:x",{"url":"u","detail":"low"}]}')
    assert a.images[0] == "data:x" and a.images[1] == ImageRef("u", "low")
    b = DECODE_COMPLETION.decode(b'{"model":"m","prompt":"<image>hi","extra_body":{"images":["u"]}}')
    assert b.extra_body.images == ["u"]
