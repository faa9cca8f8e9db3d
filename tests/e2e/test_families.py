"""Every served family end to end: the gateway's own rendering equals vLLM's, images expanded.

For the same two-image conversation, the prompt token ids the engine reports for the gateway's
request (rendered by the gateway's templates, tokenized by the gateway, sent to
``/inference/v1/generate``) must equal the ids vLLM itself produces from the checkpoint's official
chat template on its own ``/v1/chat/completions``. ``usage.prompt_tokens`` must count them all.
"""

from __future__ import annotations

import httpx
import pytest
from transformers import AutoTokenizer

from tests.e2e.conftest import EMBEDDED_FAMILY, REMOTE_FAMILIES, model_id
from tests.helpers import png_data_uri
from vlm_gateway.prompts.families import get_family

pytestmark = pytest.mark.engine

FAMILIES = [EMBEDDED_FAMILY, *REMOTE_FAMILIES]

# Tokens the engine's processor puts in per image, for the test images below (112x84 and 84x56 px).
# Qwen2.5-VL: (h/28)*(w/28) after rounding sides to multiples of 28 → 4*3 + 3*2 = 18 <|image_pad|>.
# LLaVA-1.5: always 576 <image> per image. Gemma 3: 256 <image_soft_token> per image.
EXPANDED_TOKEN = {"qwen2_5_vl": ("<|image_pad|>", 18), "llava_1_5": ("<image>", 1152),
                  "gemma3": ("<image_soft_token>", 512), "llama4": ("<|patch|>", None)}


def two_image_messages() -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "text", "text": "Compare these:"},
        {"type": "image_url", "image_url": {"url": png_data_uri(112, 84, (250, 0, 0))}},
        {"type": "image_url", "image_url": {"url": png_data_uri(84, 56, (0, 0, 250))}},
        {"type": "text", "text": "Which is bluer?"},
    ]}]


@pytest.fixture(scope="module")
def tokenizers(checkpoints):
    return {family: AutoTokenizer.from_pretrained(str(checkpoints[family])) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_two_images_token_ids_match_vllm_rendering(family: str, gateway, http: httpx.Client, tokenizers) -> None:
    body = {"model": model_id(family), "messages": two_image_messages(), "max_tokens": 2, "temperature": 0,
            "return_token_ids": True}
    ours = http.post("/v1/chat/completions", json=body)
    assert ours.status_code == 200, ours.text
    ours = ours.json()
    # vLLM's chat route adds no BOS by default; the family data says whether the model expects one
    # (LLaVA-1.5: yes, its template writes none) — ask vLLM for the same.
    direct = httpx.post(gateway.engines[family] + "/v1/chat/completions", timeout=120,
                        json={**body, "add_special_tokens": get_family(family).add_special_tokens})
    assert direct.status_code == 200, direct.text
    theirs = direct.json()["prompt_token_ids"]

    assert ours["prompt_token_ids"] == theirs
    assert ours["usage"]["prompt_tokens"] == len(theirs)
    # the images were expanded by the engine, as the family's processor does it
    token, expected = EXPANDED_TOKEN[family]
    token_id = tokenizers[family].convert_tokens_to_ids(token)
    count = theirs.count(token_id)
    assert count == expected if expected is not None else count > 2
    assert ours["usage"]["prompt_tokens_details"]["image_tokens"] >= count
    # and the generated text is the same greedy continuation
    assert ours["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("family", FAMILIES)
def test_image_placeholder_sent_once_per_image(family: str, http: httpx.Client, tokenizers) -> None:
    """Raw completions with hand-written generic <image> markers reach the engine as native markers."""
    fam = get_family(family)
    prompt = "Look: <image> and <image> — what differs?"
    r = http.post("/v1/completions", json={
        "model": model_id(family), "prompt": prompt, "max_tokens": 2, "return_token_ids": True,
        "images": [png_data_uri(112, 84), png_data_uri(84, 56)]})
    assert r.status_code == 200, r.text
    ids = r.json()["prompt_token_ids"]
    token, expected = EXPANDED_TOKEN[family]
    count = ids.count(tokenizers[family].convert_tokens_to_ids(token))
    assert count == expected if expected is not None else count > 2
    assert r.json()["usage"]["prompt_tokens"] == len(ids)
    assert fam.image_token  # the family's native token is what the engine expanded


@pytest.mark.parametrize("family", FAMILIES)
def test_marker_count_mismatch_is_400(family: str, http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": model_id(family), "prompt": "<image> hi", "max_tokens": 2,
                                           "images": [png_data_uri(), png_data_uri()]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "1" in err["message"] and "2" in err["message"] and err["param"] == "prompt"

