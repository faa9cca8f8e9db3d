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


def test_null_is_the_default_for_nested_and_extension_fields() -> None:
    """As OpenAI reads a null (and the SDK sends None for fields left unset)."""
    req = DECODE_CHAT.decode(msgspec.json.encode({
        "model": "m", "stream": True, "stream_options": {"include_usage": None},
        "return_token_ids": None, "min_tokens": None, "ignore_eos": None,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": None}},
            {"type": "image", "url": "https://x/z.png", "detail": None}]}]}))
    assert [p.image_url.detail if isinstance(p, ImageUrlPart) else p.detail
            for p in req.messages[0].content] == ["auto", "auto"]
    assert req.stream_options.include_usage is False
    assert (req.return_token_ids, req.min_tokens, req.ignore_eos) == (False, 0, False)
    comp = DECODE_COMPLETION.decode(b'{"model":"m","prompt":"<image>hi","max_tokens":null,"min_tokens":null,'
                                    b'"images":[{"url":"u","detail":null}]}')
    assert (comp.max_tokens, comp.min_tokens, comp.images[0].detail) == (16, 0, "auto")  # OpenAI's 16, not "no limit"
    assert DECODE_COMPLETION.decode(b'{"model":"m","prompt":"x","max_tokens":0}').max_tokens == 0
