"""Phi-3.5-vision served for real: a tiny ``Phi3VForCausalLM`` run by vLLM 0.32's ``phi3v``, whose config and
processor are this project's re-implementation of the Hub's remote code (in the checkpoint's folder,
loaded with ``--trust-remote-code``, which the family's data adds to the engines the gateway starts).

- A two-image chat: the gateway's rendering (the official template, ``<|image_1|>`` / ``<|image_2|>``
  marker lines) reaches the engine as the same token ids vLLM produces from the same template and
  images; each marker expands into ``<|image|>`` (id 32044) tokens, all counted in ``usage``.
- The OpenAI SDK streams from it.
- The seed's raw completions call (``SYSTEM: …\\n\\nUSER:<image>\\n…\\n\\nASSISTANT:`` plus ``images``) is
  served: the generic ``<image>`` becomes ``<|image_1|>``.
- ``detail`` cannot change Phi-3.5-vision's image tokens here: the HD transform scales every image up to
  ``num_crops`` (4) crops of 336 px whatever its size, so low (longer side 512) and high give the same count;
  only the engine-wide ``num_crops`` changes it (vLLM's token-in endpoint takes no per-request processor
  settings).
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.conftest import FamilyGateway, family_gateway
from tests.helpers import png_data_uri
from vlm_gateway.testing.tiny import phi3_5_vision as phi

pytestmark = pytest.mark.engine
FAMILY = "phi3_5_vision"


@pytest.fixture(scope="module")
def served(tiny_dir, logs):
    yield from family_gateway(FAMILY, tiny_dir, logs)


@pytest.fixture(scope="module")
def client(served: FamilyGateway):
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def two_image_messages() -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "text", "text": "Compare these:"},
        {"type": "image_url", "image_url": {"url": png_data_uri(112, 84, (250, 0, 0))}},
        {"type": "image_url", "image_url": {"url": png_data_uri(84, 56, (0, 0, 250))}},
        {"type": "text", "text": "Which is bluer?"}]}]


def test_two_images_token_ids_match_vllm_rendering(served: FamilyGateway) -> None:
    body = {"model": served.model, "messages": two_image_messages(), "max_tokens": 3, "temperature": 0,
            "return_token_ids": True}
    ours = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=120)
    assert ours.status_code == 200, ours.text
    # the published processor starts the prompt with <s>; vLLM's chat route adds none unless asked
    direct = httpx.post(served.engine + "/v1/chat/completions", json={**body, "add_special_tokens": True},
                        timeout=120)
    assert direct.status_code == 200, direct.text
    theirs = direct.json()["prompt_token_ids"]
    assert ours.json()["prompt_token_ids"] == theirs
    per_image = [phi.tokens_for_image(112, 84), phi.tokens_for_image(84, 56)]
    assert theirs.count(phi.IMAGE_TOKEN_ID) == sum(per_image)
    usage = ours.json()["usage"]
    assert usage["prompt_tokens"] == len(theirs) == direct.json()["usage"]["prompt_tokens"]
    assert usage["prompt_tokens_details"]["image_tokens"] == sum(per_image)
    assert ours.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]


def test_streams_through_the_openai_sdk_with_usage(client: openai.OpenAI, served: FamilyGateway) -> None:
    chunks = list(client.chat.completions.create(
        model=served.model, messages=two_image_messages(), max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens > 2 * phi.tokens_for_image(112, 84) - 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_seed_raw_completions_with_image_markers(served: FamilyGateway) -> None:
    prompt = "SYSTEM: You describe photos.\n\nUSER:<image>\nWhat is shown here?\n\nASSISTANT:"
    r = httpx.post(served.url + "/v1/completions", timeout=120, json={
        "model": served.model, "prompt": prompt, "images": [png_data_uri(64, 48)], "max_tokens": 4,
        "return_token_ids": True})
    assert r.status_code == 200, r.text
    ids = r.json()["prompt_token_ids"]
    assert ids.count(phi.IMAGE_TOKEN_ID) == phi.tokens_for_image(64, 48)
    assert r.json()["usage"]["prompt_tokens"] == len(ids)
    assert r.json()["usage"]["completion_tokens"] <= 4
    # a marker without its image is the client's mistake, named
    bad = httpx.post(served.url + "/v1/completions", timeout=120, json={
        "model": served.model, "prompt": prompt, "images": [], "max_tokens": 1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] is not None


def test_detail_cannot_change_the_image_tokens(served: FamilyGateway) -> None:
    counts = {}
    for detail in ("low", "high"):
        r = httpx.post(served.url + "/v1/chat/completions", timeout=120, json={
            "model": served.model, "max_tokens": 1, "return_token_ids": True, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_uri(1024, 768), "detail": detail}},
                {"type": "text", "text": "Describe."}]}]})
        assert r.status_code == 200, r.text
        counts[detail] = r.json()["prompt_token_ids"].count(phi.IMAGE_TOKEN_ID)
    assert counts == {"low": phi.tokens_for_image(1024, 768), "high": phi.tokens_for_image(1024, 768)}
