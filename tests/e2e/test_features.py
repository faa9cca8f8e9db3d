"""Images made into the model's input by the gateway (Qwen2.5-VL, ``vlm_gateway.images.features``) against
a real vLLM: the tensors equal vLLM's own processor's (its render endpoint), a conversation's image
travels once and is then sent by key with the same greedy answers as vLLM's own chat route, and an
engine that does not hold a key gets the data again."""

from __future__ import annotations

import base64
import hashlib
import io
import time

import aiohttp
import httpx
import msgspec
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import EMBEDDED_FAMILY, model_id
from vlm_gateway.engines import EngineRequest, PlacedImage, SamplingParams
from vlm_gateway.engines.vllm_remote import VLLMServer
from vlm_gateway.images.decode import prepare
from vlm_gateway.images.features import expand, load_preprocessor
from vlm_gateway.images.inputs import detail_rule
from vlm_gateway.prompts.families import get_family

pytestmark = pytest.mark.engine

MODEL = model_id(EMBEDDED_FAMILY)
FAMILY = get_family(EMBEDDED_FAMILY)


def encoded(im: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90°
    return encoded(noise(84, 56, seed=3), "JPEG", exif=exif, quality=95)


IMAGES = {
    "on the grid": encoded(noise(84, 56, seed=1), "PNG"),
    "resized up": encoded(noise(64, 48, seed=2), "PNG"),
    "resized down": encoded(noise(300, 200, seed=4), "PNG"),
    "large JPEG, detail auto": encoded(noise(1600, 1200, seed=8), "JPEG", quality=90),
    "transparent": encoded(noise(56, 56, "RGBA", seed=5), "PNG"),
    "grey": encoded(noise(84, 84, "L", seed=6), "PNG"),
    "EXIF rotated JPEG": rotated_jpeg(),
}


def unpack(item_b64: str) -> dict[str, np.ndarray]:
    item = msgspec.msgpack.decode(base64.b64decode(item_b64))
    return {name: np.frombuffer(v["data"][2].data, dtype=v["data"][0]).reshape(v["data"][1])
            for name, v in item.items()}


def chat(uri: str, text: str = "What is this?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": text}]}]


@pytest.mark.parametrize("name", list(IMAGES))
def test_the_gateways_input_is_vllms_own(name: str, gateway, checkpoints) -> None:
    """What the gateway makes of an image equals what vLLM's processor makes of the image the gateway would
    otherwise send it (``sized.url``: the bytes as they came, or the loader's PNG where ``detail`` resized)."""
    data = IMAGES[name]
    pre = load_preprocessor(FAMILY.image_processor, str(checkpoints[EMBEDDED_FAMILY]), max_bytes=64 << 20)
    sized = prepare(data, hashlib.sha256(data).hexdigest(), "auto", detail_rule(FAMILY.detail), 10**8, pre)
    rendered = httpx.post(gateway.engines[EMBEDDED_FAMILY] + "/v1/chat/completions/render", timeout=120,
                          json={"model": MODEL, "messages": chat(sized.url)})
    assert rendered.status_code == 200, rendered.text
    theirs = rendered.json()["features"]
    ours = sized.features
    assert ours is not None
    assert ours.tokens == theirs["mm_placeholders"]["image"][0]["length"]
    mine, vllm = unpack(ours.data), unpack(theirs["kwargs_data"]["image"][0])
    assert mine.keys() == vllm.keys() == {"pixel_values", "image_grid_thw"}
    assert np.array_equal(mine["image_grid_thw"], vllm["image_grid_thw"])
    assert mine["pixel_values"].dtype == vllm["pixel_values"].dtype == np.uint8
    assert np.array_equal(mine["pixel_values"], vllm["pixel_values"])


def image_inputs(gateway) -> dict[str, float]:
    text = httpx.get(gateway.url + "/metrics").text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "vlm_gateway_engine_image_inputs":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["sent"]] = out.get(sample.labels["sent"], 0) + sample.value
    return out


def test_a_conversations_image_travels_once_and_answers_match_vllm(gateway, http: httpx.Client) -> None:
    uri = "data:image/png;base64," + base64.b64encode(encoded(noise(112, 84, seed=int(time.time())), "PNG")).decode()
    before = image_inputs(gateway)
    messages: list[dict] = []
    for turn in range(3):
        messages += chat(uri, f"Turn {turn}: what changed?")
        # greedy on both sides, and no repetition penalty: vLLM's chat route would apply the checkpoint's
        body = {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0, "repetition_penalty": 1.0,
                "return_token_ids": True}
        ours = http.post("/v1/chat/completions", json=body)
        assert ours.status_code == 200, ours.text
        direct = httpx.post(gateway.engines[EMBEDDED_FAMILY] + "/v1/chat/completions", json=body, timeout=120)
        assert direct.status_code == 200, direct.text
        assert ours.json()["prompt_token_ids"] == direct.json()["prompt_token_ids"]
        assert ours.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]
        assert ours.json()["usage"]["prompt_tokens_details"]["image_tokens"] == 12 * (turn + 1)
        messages.append({"role": "assistant", "content": ours.json()["choices"][0]["message"]["content"]})
    after = image_inputs(gateway)
    # turn 1: data; turn 2: two copies, by key; turn 3: three copies, by key
    assert after.get("data", 0) - before.get("data", 0) == 1
    assert after.get("key", 0) - before.get("key", 0) == 5
    assert after.get("resent", 0) == before.get("resent", 0)


async def test_a_key_the_engine_does_not_hold_is_sent_again_with_its_data(gateway, checkpoints) -> None:
    """vLLM answers a key it does not hold (its cache dropped it, or it restarted) with a 500 before any
    output; the client sends the request again with the data, and the answer is whole."""
    from tokenizers import Tokenizer

    data = encoded(noise(56, 56, seed=int(time.time()) + 7), "PNG")
    pre = load_preprocessor(FAMILY.image_processor, str(checkpoints[EMBEDDED_FAMILY]))
    features = prepare(data, hashlib.sha256(data).hexdigest(), "auto", detail_rule(FAMILY.detail), 10**8,
                       pre).features
    tok = Tokenizer.from_file(str(checkpoints[EMBEDDED_FAMILY] / "tokenizer.json"))
    pad = tok.token_to_id(FAMILY.image_token)
    ids = tok.encode("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
                     "<|im_start|>assistant\n", add_special_tokens=False).ids
    expanded, offsets = expand(ids, pad, [features])
    request = EngineRequest("features-miss", expanded, [], SamplingParams(max_tokens=3, ignore_eos=True),
                            features=[PlacedImage(offsets[0], features)])
    async with aiohttp.ClientSession() as session:
        server = VLLMServer(gateway.engines[EMBEDDED_FAMILY], session)
        server._held.put(features.key, len(features.data))  # as if sent before: vLLM has never seen it
        deltas = [d async for d in server.generate(request, time.monotonic() + 120, 120)]
    assert sum(len(d.token_ids) for d in deltas) == 3
    assert next(d.image_tokens for d in deltas if d.image_tokens is not None) == features.tokens


def test_render_shows_the_expanded_ids_vllm_renders(gateway, http: httpx.Client) -> None:
    """The gateway's render route shows the ids it sends: each image already expanded into its own tokens,
    at the places vLLM's own render route puts them."""
    uri = "data:image/png;base64," + base64.b64encode(IMAGES["on the grid"]).decode()
    body = {"model": MODEL, "messages": chat(uri) + [{"role": "assistant", "content": "A square."}]
            + chat(uri, "And this one?")}
    ours = http.post("/v1/chat/completions/render", json=body)
    assert ours.status_code == 200, ours.text
    theirs = httpx.post(gateway.engines[EMBEDDED_FAMILY] + "/v1/chat/completions/render", json=body, timeout=120)
    assert theirs.status_code == 200, theirs.text
    ours, theirs = ours.json(), theirs.json()
    assert ours["images_expanded"] is True and ours["token_ids"] == theirs["token_ids"]
    placed = [(p["offset"], p["length"]) for p in ours["features"]["mm_placeholders"]]
    assert placed == [(p["offset"], p["length"]) for p in theirs["features"]["mm_placeholders"]["image"]]
    assert ours["image_tokens"] == sum(length for _, length in placed) and ours["token_count"] == len(ours["token_ids"])
