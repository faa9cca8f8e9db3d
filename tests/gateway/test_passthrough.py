"""A model served by an OpenAI pass-through engine, through the whole gateway (real pool, real
``OpenAIServer``, a scripted OpenAI-compatible server; tests/e2e points it at a real stock vLLM): the
gateway loads the images and sends them as its own data URIs in the client's message order (images first
for families that want it), streams the answer back and reports the upstream's usage; a pool that mixes
kinds fails over from a token-in server that is gone to the pass-through one."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from tests.engines.test_openai_passthrough import FakeOpenAI, closed_port_url, serve_fake
from tests.helpers import png_bytes, png_data_uri
from vlm_gateway.app import create_app
from vlm_gateway.settings import EngineSettings, ModelSettings, Settings


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    """The scripted OpenAI server on its own event loop (the app under test runs on another)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = FakeOpenAI()
    runner, url = asyncio.run_coroutine_threadsafe(serve_fake(fake), loop).result(10)
    yield fake, url
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def client(tiny_checkpoint, upstream):
    _, url = upstream
    gone = closed_port_url().removesuffix("/v1")
    settings = Settings(models=[
        ModelSettings(id="pass", checkpoint=str(tiny_checkpoint),
                      engine=EngineSettings(kind="openai", urls=[url], model="m")),
        ModelSettings(id="first", checkpoint=str(tiny_checkpoint), images_before_text=True,
                      engine=EngineSettings(kind="openai", urls=[url], model="m")),
        ModelSettings(id="mixed", checkpoint=str(tiny_checkpoint),
                      engine=EngineSettings(kind="remote", urls=[gone]),
                      engines=[EngineSettings(kind="openai", urls=[url], model="m")]),
    ])
    with TestClient(create_app(settings)) as c:
        yield c


def chat(model: str = "pass", **extra) -> dict:
    return {"model": model, "max_tokens": 4, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": png_data_uri(64, 48)}}]}], **extra}


def test_chat_goes_upstream_with_the_gateways_image_and_usage_comes_back(client, upstream) -> None:
    fake, _ = upstream
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "pass" and body["choices"][0]["message"]["content"] == "Hello"
    assert body["usage"]["prompt_tokens"] == 7 and body["usage"]["completion_tokens"] == 2
    sent = fake.bodies[-1]
    # nothing streams to the client: the upstream is asked for a whole answer
    assert sent["model"] == "m" and sent["max_tokens"] == 4 and sent["stream"] is False
    assert "stop_token_ids" not in sent
    system, user = sent["messages"]
    # LLaVA's template reads list content only: the family's reshaping applies upstream too
    assert system == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    text, image = user["content"]
    assert text == {"type": "text", "text": "What is this?"}
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == png_bytes(64, 48)


def test_images_first_families_send_the_image_first(client, upstream) -> None:
    fake, _ = upstream
    assert client.post("/v1/chat/completions", json=chat("first")).status_code == 200
    assert [p["type"] for p in fake.bodies[-1]["messages"][1]["content"]] == ["image_url", "text"]


def test_streamed_chat_and_usage(client, upstream) -> None:
    r = client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == "Hello"
    assert events[-1]["usage"]["prompt_tokens"] == 7 and events[-1]["usage"]["total_tokens"] == 9
    assert upstream[0].bodies[-1]["stream"] is True


def test_tools_are_shown_upstream_and_calls_read_by_the_gateway(client, upstream) -> None:
    fake, _ = upstream
    tool = {"type": "function", "function": {"name": "look", "parameters": {"type": "object", "properties": {}}}}
    assert client.post("/v1/chat/completions", json=chat(tools=[tool])).status_code == 200
    assert fake.bodies[-1]["tools"][0]["function"]["name"] == "look" and fake.bodies[-1]["tool_choice"] == "none"


def test_completions_with_images_are_refused_naming_chat(client, upstream) -> None:
    fake, _ = upstream
    before = len(fake.bodies)
    r = client.post("/v1/completions", json={"model": "pass", "prompt": "<image>\nWhat?", "max_tokens": 2,
                                             "images": [png_data_uri()]})
    assert r.status_code == 400 and "chat" in r.json()["error"]["message"]
    assert len(fake.bodies) == before  # nothing was sent upstream


def test_text_completions_send_the_gateways_token_ids(client, upstream) -> None:
    fake, _ = upstream
    r = client.post("/v1/completions", json={"model": "pass", "prompt": "Once upon", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "Hello"
    prompt = fake.bodies[-1]["prompt"]
    assert isinstance(prompt, list) and all(isinstance(t, int) for t in prompt) and prompt


def test_a_mixed_pool_fails_over_to_the_pass_through_server(client, upstream) -> None:
    fake, url = upstream
    before = len(fake.bodies)
    r = client.post("/v1/chat/completions", json=chat("mixed"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello"
    assert len(fake.bodies) == before + 1
    metrics = client.get("/metrics").text
    assert f'vlm_gateway_engine_server_up{{model="mixed",server="{url}"}} 1.0' in metrics
    assert 'vlm_gateway_engine_server_up{model="mixed",server="http://127.0.0.1:' in metrics
