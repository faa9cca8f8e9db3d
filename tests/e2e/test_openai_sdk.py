"""The gateway through the real OpenAI Python SDK (base_url), against real vLLM engines."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import EMBEDDED_FAMILY, REMOTE_FAMILIES, model_id
from tests.helpers import png_data_uri

pytestmark = pytest.mark.engine

EMBEDDED = model_id(EMBEDDED_FAMILY)
REMOTE = model_id(REMOTE_FAMILIES[0])


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def image_message(text: str = "What is in this image?") -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri(), "detail": "low"}},
        {"type": "text", "text": text},
    ]}]


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_chat_with_data_uri_image(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=image_message(), max_tokens=8,
                                           temperature=0)
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == model
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens == 8 or choice.finish_reason == "stop"
    # the image was expanded by the engine: far more prompt tokens than the text alone
    assert reply.usage.prompt_tokens > 20
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_chat_streamed_with_usage(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=image_message(), max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [finishes[0]] and finishes[0] in ("stop", "length")
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens >= 1 and usage.prompt_tokens > 20
    # streamed and non-streamed agree on the same greedy request
    full = client.chat.completions.create(model=model, messages=image_message(), max_tokens=8, temperature=0)
    assert text == full.choices[0].message.content
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_completions_create(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=REMOTE, prompt="USER: Say something. ASSISTANT:", max_tokens=5,
                                      temperature=0)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert isinstance(reply.choices[0].text, str)
    assert reply.usage.completion_tokens <= 5


def test_completions_streamed(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=EMBEDDED, prompt="Hello", max_tokens=4, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    full = client.completions.create(model=EMBEDDED, prompt="Hello", max_tokens=4, temperature=0)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text


def test_models_list(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert EMBEDDED in models and REMOTE in models
    card = models[EMBEDDED].model_dump()
    assert card["owned_by"] and card["max_images"] >= 1 and card["context_length"] == 4096
    assert card["family"] == EMBEDDED_FAMILY


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=image_message(), max_tokens=2)
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"


@pytest.mark.parametrize("content", [
    [{"type": "image_url", "image_url": "not-an-object"}],
    [{"type": "video", "video": "x"}],
    [{"type": "text"}],
    42,
], ids=["image_url-string", "unknown-part", "text-missing", "number"])
def test_malformed_content_is_bad_request(client: openai.OpenAI, content) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=EMBEDDED, messages=[{"role": "user", "content": content}],
                                       max_tokens=2)
    assert info.value.body["param"].startswith("messages[0].content")
    assert info.value.body["type"] == "invalid_request_error"


def test_broken_image_is_bad_request(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
        {"type": "text", "text": "hi"}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=EMBEDDED, messages=messages, max_tokens=2)
    assert info.value.body["param"] == "messages[0].content[0].image_url"


DOCUMENTED_PROMPT = "SYSTEM: Hello\n\nUSER:<image>\ntell me about the image\n\nASSISTANT:"


@pytest.mark.parametrize("family", ["llava_1_5", EMBEDDED_FAMILY])
def test_completions_with_images_in_extra_body(client: openai.OpenAI, family: str) -> None:
    """The documented raw prompt with one hand-written <image> marker, images sent via extra_body."""
    reply = client.completions.create(model=model_id(family), prompt=DOCUMENTED_PROMPT, max_tokens=4,
                                      temperature=0, extra_body={"images": [png_data_uri(64, 64)],
                                                                 "return_token_ids": True})
    assert isinstance(reply.choices[0].text, str)
    assert reply.usage.prompt_tokens > 20  # the image was expanded
    assert len(reply.model_extra["prompt_token_ids"]) == reply.usage.prompt_tokens


def test_completions_marker_mismatch_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=REMOTE, prompt=DOCUMENTED_PROMPT, max_tokens=2,
                                  extra_body={"images": [png_data_uri(), png_data_uri()]})
    assert info.value.body["param"] == "prompt"
