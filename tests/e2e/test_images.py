"""Images end to end: `detail` changes what the model sees and what the user pays; URL images."""

from __future__ import annotations

import threading

import httpx
import pytest
from aiohttp import web

from tests.e2e.conftest import EMBEDDED_FAMILY, model_id
from tests.helpers import png_bytes, png_data_uri

pytestmark = pytest.mark.engine
QWEN = model_id(EMBEDDED_FAMILY)


def ask(http: httpx.Client, url: str, detail: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url, "detail": detail}}, {"type": "text", "text": "What?"}]
    r = http.post("/v1/chat/completions",
                  json={"model": QWEN, "max_tokens": 1, "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def test_detail_low_costs_at_least_4x_fewer_tokens_than_high(http: httpx.Client) -> None:
    image = png_data_uri(1024, 1024, (10, 120, 30))
    low, high, auto = (ask(http, image, d) for d in ("low", "high", "auto"))
    low_img = low["prompt_tokens_details"]["image_tokens"]
    high_img = high["prompt_tokens_details"]["image_tokens"]
    assert high_img >= 4 * low_img, (low, high)
    assert high["prompt_tokens"] - low["prompt_tokens"] == high_img - low_img
    # auto on a large image is high (templates/families.toml): the same prompt, so vLLM's prefix cache holds
    # what the high request computed
    cached = auto["prompt_tokens_details"].pop("cached_tokens")
    assert cached > 0 and high["prompt_tokens_details"].pop("cached_tokens") < cached
    assert auto == high


@pytest.fixture(scope="module")
def image_server():
    """A loopback image server (the gateway's test config allows loopback URLs)."""
    hits: list[str] = []

    async def image(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=png_bytes(200, 100, (0, 0, 200)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}.png", image)
    runner = web.AppRunner(app)
    loop_ready = threading.Event()
    state: dict = {}

    def serve() -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        state["loop"] = loop
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        state["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        loop_ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    loop_ready.wait(10)
    yield f"http://127.0.0.1:{state['port']}", hits
    state["loop"].call_soon_threadsafe(state["loop"].stop)
    thread.join(10)


def test_url_image_is_fetched_once_and_cached(http: httpx.Client, image_server) -> None:
    base, hits = image_server
    url = f"{base}/blue.png"
    first = ask(http, url, "high")
    second = ask(http, url, "high")
    assert first == second and first["prompt_tokens_details"]["image_tokens"] > 1
    assert hits.count("/blue.png") == 1  # the second request was served from the gateway's cache


def test_url_image_not_found_is_400(http: httpx.Client, image_server) -> None:
    base, _ = image_server
    content = [{"type": "image_url", "image_url": {"url": f"{base}/missing"}}, {"type": "text", "text": "?"}]
    r = http.post("/v1/chat/completions",
                  json={"model": QWEN, "max_tokens": 1, "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[0].image_url"
