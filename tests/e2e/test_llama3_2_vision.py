"""Llama 3.2 Vision served for real: a tiny ``MllamaForConditionalGeneration`` (tiled ViT, cross-attention layers)
run by vLLM 0.32 through this project's vLLM model plugin (``vlm_gateway/engines/vllm_models/mllama.py``: vLLM
dropped mllama after 0.10.2), behind the gateway.

- What the engine computes is what transformers computes for the same prompt and image (float32 engine): the
  image's tiles reach the cross-attention layers, and a request without an image skips them.
- The gateway's rendering (the official template; images moved ahead of the text, the family's rule) reaches
  the engine as the ids vLLM renders from the checkpoint's template with the image first; ``usage`` is the
  engine's count: the prompt holds one ``<|image|>`` token, the tiles are read through cross-attention.
- The OpenAI SDK streams from it; a second image is the client's mistake (the family takes one).
- ``detail`` changes the tiles the model reads (``low``: one 560 px tile; ``high``: up to four), not the
  prompt's tokens.
"""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.e2e.conftest import FamilyGateway, family_gateway
from tests.helpers import png_data_uri

pytestmark = pytest.mark.engine
FAMILY = "llama3_2_vision"


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return buf.getvalue()


WIDE = noise_png(1500, 400)  # three tiles at detail high (1 x 3 canvas), one at low
WIDE_URI = "data:image/png;base64," + base64.b64encode(WIDE).decode()


@pytest.fixture(scope="module")
def served(tiny_dir, logs):
    # float32: the engine's numbers are compared with transformers' below
    yield from family_gateway(FAMILY, tiny_dir, logs, engine_args=("--dtype", "float32"))


@pytest.fixture(scope="module")
def client(served: FamilyGateway):
    with openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def text_then_image(uri: str = WIDE_URI, detail: str = "high") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                         {"type": "image_url", "image_url": {"url": uri, "detail": detail}}]}]


def first_token_logprobs(url: str, model: str, messages: list[dict]) -> tuple[list[int], dict[int, float]]:
    """vLLM's own chat route: the prompt's ids and the first token's 20 most likely ids, with logprobs."""
    r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": model, "messages": messages, "max_tokens": 1, "temperature": 0, "logprobs": True,
        "top_logprobs": 20, "return_token_ids": True, "return_tokens_as_token_ids": True})
    assert r.status_code == 200, r.text
    body = r.json()
    top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return body["prompt_token_ids"], {int(t["token"].removeprefix("token_id:")): t["logprob"] for t in top}


def test_the_engine_computes_what_transformers_computes(served: FamilyGateway) -> None:
    import torch

    from vlm_gateway.engines import cpu_compat

    cpu_compat.apply()
    from transformers import AutoProcessor, MllamaForConditionalGeneration
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    image_first = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": WIDE_URI}},
                                                {"type": "text", "text": "What is in this picture?"}]}]
    ids, engine = first_token_logprobs(served.engine, served.model, image_first)
    processor = AutoProcessor.from_pretrained(served.checkpoint)
    model = MllamaForConditionalGeneration.from_pretrained(served.checkpoint, dtype=torch.float32).eval()
    image = processor.image_processor([[Image.open(io.BytesIO(WIDE))]], return_tensors="pt")
    assert image["num_tiles"] == [[3]]
    mask = convert_sparse_cross_attention_mask_to_dense(
        [get_cross_attention_token_mask(ids, processor.image_token_id)], image["num_tiles"], max_num_tiles=4,
        length=len(ids))
    with torch.no_grad():
        seen = model(input_ids=torch.tensor([ids]), pixel_values=image["pixel_values"],
                     aspect_ratio_ids=image["aspect_ratio_ids"], aspect_ratio_mask=image["aspect_ratio_mask"],
                     cross_attention_mask=torch.tensor(mask)).logits[0, -1].log_softmax(-1)
        unseen = model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    top = [int(i) for i in seen.topk(5).indices]
    theirs = {i: float(seen[i]) for i in top}
    blind = {i: float(unseen[i]) for i in top}
    assert set(theirs) <= set(engine), (theirs, engine)
    assert max(abs(engine[t] - theirs[t]) for t in theirs) < 0.003, (engine, theirs)
    assert max(abs(engine[t] - blind[t]) for t in theirs) > 0.005, (engine, blind)  # the image mattered

    # without an image the cross-attention layers are skipped, as transformers skips them
    text_only = [{"role": "user", "content": "What is in this picture?"}]
    ids, engine = first_token_logprobs(served.engine, served.model, text_only)
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    top = [int(i) for i in plain.topk(5).indices]
    assert set(top) <= set(engine), (top, engine)
    assert max(abs(engine[i] - float(plain[i])) for i in top) < 0.003


def test_token_ids_match_vllm_rendering_with_the_image_first(served: FamilyGateway) -> None:
    body = {"model": served.model, "messages": text_then_image(), "max_tokens": 3, "temperature": 0,
            "return_token_ids": True}
    ours = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=120)
    assert ours.status_code == 200, ours.text
    image_first = [{"role": "user", "content": list(reversed(text_then_image()[0]["content"]))}]
    direct = httpx.post(served.engine + "/v1/chat/completions", timeout=120,
                        json={**body, "messages": image_first})
    assert direct.status_code == 200, direct.text
    theirs = direct.json()["prompt_token_ids"]
    assert ours.json()["prompt_token_ids"] == theirs
    image_id = httpx.post(served.url + "/v1/chat/completions/render", timeout=30, json={
        "model": served.model, "messages": text_then_image()}).json()["features"]["image_token_id"]
    assert theirs.count(image_id) == 1 and theirs.index(image_id) < len(theirs) - 10  # ahead of the text
    usage = ours.json()["usage"]
    assert usage["prompt_tokens"] == len(theirs) == direct.json()["usage"]["prompt_tokens"]
    assert usage["prompt_tokens_details"]["image_tokens"] == 1
    assert ours.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]


def test_streams_text_before_the_image_through_the_openai_sdk(client: openai.OpenAI, served: FamilyGateway) -> None:
    chunks = list(client.chat.completions.create(
        model=served.model, messages=text_then_image(), max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens_details.image_tokens == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_a_second_image_is_the_clients_mistake(client: openai.OpenAI, served: FamilyGateway) -> None:
    messages = text_then_image()
    messages[0]["content"].append({"type": "image_url", "image_url": {"url": png_data_uri(84, 56)}})
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=served.model, messages=messages, max_tokens=2)
    assert "at most 1" in err.value.message


def test_detail_changes_the_tiles_read_not_the_prompt(served: FamilyGateway) -> None:
    seen = {}
    for detail in ("low", "high"):
        r = httpx.post(served.url + "/v1/chat/completions", timeout=120, json={
            "model": served.model, "messages": text_then_image(detail=detail), "max_tokens": 1, "temperature": 0,
            "logprobs": True, "top_logprobs": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        seen[detail] = (body["usage"]["prompt_tokens"],
                        [t["logprob"] for t in body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]])
    assert seen["low"][0] == seen["high"][0]  # one <|image|> token either way
    assert seen["low"][1] != seen["high"][1]  # one tile against three: the model read another input


def test_requests_with_and_without_an_image_batched_together_answer_as_alone(served: FamilyGateway) -> None:
    """The cross-attention layers act per request in a mixed batch: rows of a request without an image pass
    through, rows of one with an image read its own tiles (and its text before the image has no MLP)."""
    from concurrent.futures import ThreadPoolExecutor

    conversations = [text_then_image(), [{"role": "user", "content": "Tell me a story."}],
                     text_then_image(png_data_uri(300, 200, (10, 200, 10))), [{"role": "user", "content": "Hi!"}]]
    alone = [first_token_logprobs(served.engine, served.model, m)[1] for m in conversations]
    with ThreadPoolExecutor(8) as pool:  # twice each, all at once: the engine batches them
        together = list(pool.map(lambda m: first_token_logprobs(served.engine, served.model, m)[1],
                                 conversations * 2))
    for i, answer in enumerate(together):
        expected = alone[i % len(conversations)]
        best = sorted(expected, key=expected.get, reverse=True)[:5]
        assert max(abs(answer[t] - expected[t]) for t in best) < 1e-3, (i, answer, expected)
