"""FastVLM served for real: a tiny ``FastVlmForConditionalGeneration`` (FastViTHD tower, Qwen2 language model)
run by vLLM's Transformers modeling backend, behind the gateway.

- The gateway's rendering (the official Qwen2 template with the ``<image>`` marker line) reaches the engine
  as the same token ids vLLM produces from the checkpoint's chat template; the marker expands into 256
  ``<image>`` tokens, all counted in ``usage``.
- The OpenAI SDK streams from it; FastVLM takes one image per request, and a second one is the client's
  mistake (400 naming ``messages``).
- The FastVLM Vision API's own call (``POST /vision``) is answered by this engine under its seed name.
- ``detail`` cannot change FastVLM's image tokens: every image is resized to 1024 x 1024 (256 tokens).
"""

from __future__ import annotations

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.e2e.conftest import FamilyGateway, family_gateway
from tests.helpers import png_data_uri
from vlm_gateway.testing.tiny import fastvlm

pytestmark = pytest.mark.engine
FAMILY = "fastvlm"
SEED_MODEL = "fastvlm-1.5b"


@pytest.fixture(scope="module")
def served(tiny_dir, logs):
    yield from family_gateway(FAMILY, tiny_dir, logs, aliases=(SEED_MODEL,))


@pytest.fixture(scope="module")
def client(served: FamilyGateway):
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def one_image_messages(detail: str = "auto", size: tuple[int, int] = (112, 84)) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri(*size, (250, 0, 0)), "detail": detail}},
        {"type": "text", "text": "What colour is this?"}]}]


def test_token_ids_match_vllm_rendering_and_usage_counts_them(served: FamilyGateway) -> None:
    body = {"model": served.model, "messages": one_image_messages(), "max_tokens": 3, "temperature": 0,
            "return_token_ids": True}
    ours = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=120)
    assert ours.status_code == 200, ours.text
    direct = httpx.post(served.engine + "/v1/chat/completions", json=body, timeout=120)
    assert direct.status_code == 200, direct.text
    theirs = direct.json()["prompt_token_ids"]
    assert ours.json()["prompt_token_ids"] == theirs
    image_id = AutoTokenizer.from_pretrained(str(served.checkpoint)).convert_tokens_to_ids(fastvlm.IMAGE_TOKEN)
    assert theirs.count(image_id) == fastvlm.TOKENS_PER_IMAGE
    usage = ours.json()["usage"]
    assert usage["prompt_tokens"] == len(theirs) == direct.json()["usage"]["prompt_tokens"]
    assert usage["prompt_tokens_details"]["image_tokens"] == fastvlm.TOKENS_PER_IMAGE
    assert ours.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]


def test_streams_through_the_openai_sdk_with_usage(client: openai.OpenAI, served: FamilyGateway) -> None:
    chunks = list(client.chat.completions.create(
        model=SEED_MODEL, messages=one_image_messages(), max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens > fastvlm.TOKENS_PER_IMAGE
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_a_second_image_is_the_clients_mistake(client: openai.OpenAI) -> None:
    messages = one_image_messages()
    messages[0]["content"].insert(0, {"type": "image_url", "image_url": {"url": png_data_uri(84, 56)}})
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SEED_MODEL, messages=messages, max_tokens=2)
    assert "at most 1" in err.value.message


def test_detail_cannot_change_the_image_tokens(served: FamilyGateway) -> None:
    counts = {}
    for detail in ("low", "high"):
        r = httpx.post(served.url + "/v1/chat/completions", timeout=120, json={
            "model": served.model, "messages": one_image_messages(detail, (1024, 768)), "max_tokens": 1})
        assert r.status_code == 200, r.text
        counts[detail] = r.json()["usage"]["prompt_tokens_details"]["image_tokens"]
    assert counts == {"low": fastvlm.TOKENS_PER_IMAGE, "high": fastvlm.TOKENS_PER_IMAGE}


def test_fastvlm_vision_api_call_is_served_by_fastvlm(served: FamilyGateway) -> None:
    r = httpx.post(served.url + "/vision", timeout=120, json={
        "image_url": png_data_uri(), "prompt": "What is in this image?", "model": SEED_MODEL, "max_tokens": 8,
        "temperature": 0.7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "vision.completion" and body["model"] == SEED_MODEL
    assert body["usage"]["prompt_tokens"] > fastvlm.TOKENS_PER_IMAGE  # the image reached a FastViTHD tower
    info = httpx.get(served.engine + "/v1/models", timeout=10).json()["data"][0]
    assert info["root"] == str(served.checkpoint)
