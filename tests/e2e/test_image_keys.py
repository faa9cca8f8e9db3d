"""Images a stock vLLM makes the model's input of itself (LLaVA-1.5 here: ``content_parts``) go with their
key as vLLM's ``uuid``, and by key alone (``url`` null) once the server holds them: a conversation that
resends its image every turn transfers, decodes and processes it once, and the answers stay vLLM's own.
A key the server does not hold (its cache dropped it, or it restarted) is answered with a 400 "Cache miss"
before any output, and the request goes again with the data; so is a request whose image vLLM's own
frontend sent by key to an engine that never got it (a 500)."""

from __future__ import annotations

import time

import aiohttp
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from tests.e2e.conftest import model_id
from tests.helpers import png_data_uri
from vlm_gateway.engines import EngineRequest, ImageKey, SamplingParams
from vlm_gateway.engines.vllm_remote import IMAGE_KEY, VLLMServer

pytestmark = pytest.mark.engine

FAMILY = "llava_1_5"
MODEL = model_id(FAMILY)


def image_inputs(gateway, server: str) -> dict[str, float]:
    """The gateway's ``vlm_gateway_engine_image_inputs`` for one server, by how the images went."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics").text):
        if family.name == "vlm_gateway_engine_image_inputs":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["server"] == server:
                    out[sample.labels["sent"]] = sample.value
    return out


def test_a_conversations_image_goes_by_key_from_its_second_turn_with_vllms_answers(gateway, http) -> None:
    uri = png_data_uri(96, 72, (int(time.time() * 1000) % 250, 40, 90))  # one no earlier run sent
    server = gateway.engines[FAMILY]
    before = image_inputs(gateway, server)
    messages: list[dict] = []
    for turn in range(3):
        messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                      {"type": "text", "text": f"Turn {turn}: and now?"}]})
        body = {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0, "repetition_penalty": 1.0,
                "return_token_ids": True}
        ours = http.post("/v1/chat/completions", json=body)
        assert ours.status_code == 200, ours.text
        direct = httpx.post(server + "/v1/chat/completions", json={**body, "add_special_tokens": True}, timeout=120)
        assert direct.status_code == 200, direct.text
        assert ours.json()["prompt_token_ids"] == direct.json()["prompt_token_ids"]
        assert ours.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": ours.json()["choices"][0]["message"]["content"]})
    after = image_inputs(gateway, server)
    # turn 1: its one copy with data; turns 2 and 3: two and three copies, each by key alone
    assert after.get("data", 0) - before.get("data", 0) == 1
    assert after.get("key", 0) - before.get("key", 0) == 5
    assert after.get("resent", 0) == before.get("resent", 0)


def test_the_image_of_a_prompt_vllm_refused_as_too_long_is_taken_by_the_next_request(gateway, http) -> None:
    """vLLM processes a request's images before it finds the prompt too long once they are expanded (the
    gateway, counting LLaVA's image as one placeholder, cannot know): its frontend keeps the processed
    image as if its engine held it, sends it by key with the next request, and the engine, which never got
    it, answers a 500 before any output (dropping the key). The gateway sends the request again."""
    image = {"type": "image_url", "image_url": {"url": png_data_uri(96, 72, (int(time.time() * 1000) % 250, 90, 40))}}
    server = gateway.engines[FAMILY]
    before = image_inputs(gateway, server)
    too_long = [{"role": "user", "content": [image, {"type": "text", "text": "lorem ipsum " * 400}]}]  # 576 + ~3600
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": too_long, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    short = [{"role": "user", "content": [image, {"type": "text", "text": "And this?"}]}]
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": short, "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"]["image_tokens"] == 576
    assert image_inputs(gateway, server).get("resent", 0) - before.get("resent", 0) == 1


async def test_a_key_the_server_does_not_hold_is_sent_again_with_its_image(gateway, checkpoints) -> None:
    tok = Tokenizer.from_file(str(checkpoints[FAMILY] / "tokenizer.json"))
    ids = tok.encode("USER: <image>\nHi ASSISTANT:", add_special_tokens=True).ids
    key = ImageKey(f"never-sent-{time.time()}", 64 * 48)
    request = EngineRequest("keys-miss", ids, [png_data_uri(64, 48, (1, 2, 3))],
                            SamplingParams(max_tokens=3, ignore_eos=True), image_keys=[key])
    async with aiohttp.ClientSession() as session:
        server = VLLMServer(gateway.engines[FAMILY], session)
        server._held.put(IMAGE_KEY + key.sha256, 1)  # as if sent before: vLLM has never seen it
        deltas = [d async for d in server.generate(request, time.monotonic() + 120, 120)]
    assert sum(len(d.token_ids) for d in deltas) == 3
    assert next(d.image_tokens for d in deltas if d.image_tokens is not None) == 576
