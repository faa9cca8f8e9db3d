"""The playground page in headless Chromium (Selenium), against the app with the scripted engine served
by uvicorn: the page loads without a key, lists the models once a key is typed, takes images (dropped,
chosen with the file input, linked, pasted), streams an answer, shows usage with image tokens apart and the
timings, shows the rendered prompt, and shows a bad key's 401 as a readable message.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``) and
the ``selenium`` package (the ``test`` extra). Skipped when they are missing, except under CI (``$CI``
set), where that is a failure (see tests/browser.py). ``VLM_GATEWAY_PLAYGROUND_SCREENSHOT=docs/playground.png``
saves a screenshot of the page after the streamed answer (how docs/playground.png is made).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import (
    KEY_STORE,
    by_id,
    chromium,
    drop_image,
    image_names,
    model_ids,
    paste_image,
    select_option,
    shown,
    text,
    wait,
)
from tests.gateway.api.test_routes import ScriptedEngine
from tests.helpers import png_bytes, png_data_uri, serve_app
from vlm_gateway.app import create_app
from vlm_gateway.limits import ConfigKey, LimitSettings
from vlm_gateway.limits.keys import hash_secret
from vlm_gateway.settings import ModelSettings, Settings

pytestmark = pytest.mark.timeout(180)

SECRET = "vlm-test-playground-secret"
KEYS = [ConfigKey(name="playground", hash=hash_secret(SECRET), rpm=0, concurrency=0)]
ANSWER = ["The picture ", "shows a ", "red ", "rectangle."]
SCREENSHOT = os.environ.get("VLM_GATEWAY_PLAYGROUND_SCREENSHOT")


@pytest.fixture(scope="module")
def engines() -> dict[str, ScriptedEngine]:
    return {}


@pytest.fixture(scope="module")
def origin(tiny_checkpoint, engines):
    settings = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint), aliases=["llava-tiny"],
                                              max_images=4)],
                        limits=LimitSettings(keys=KEYS))

    def factory(model, session):
        engines[model.id] = ScriptedEngine()
        engines[model.id].script = ANSWER
        return engines[model.id]

    with serve_app(create_app(settings, engine_factory=factory)) as base:
        yield base.removesuffix("/v1")


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def test_page_flow(browser, origin, engines, tmp_path: Path) -> None:
    d = browser
    d.get(origin + "/")  # redirected to the page, which needs no key
    wait(d, lambda d: d.current_url.endswith("/playground") and d.title.startswith("VLM Gateway"))
    wait(d, lambda d: shown(d, "error"), message="no key: the model list's 401 is shown")
    assert "401" in text(d, "error") and "API key" in text(d, "error")

    by_id(d, "api-key").send_keys(SECRET)  # typed: kept, and the models are listed
    wait(d, lambda d: model_ids(d) == ["m", "llava-tiny"], message="models listed")
    assert not shown(d, "error")
    assert d.execute_script(f"return localStorage.getItem('{KEY_STORE}')") == SECRET

    drop_image(d, "dropped.png", png_bytes(80, 60, (200, 30, 30)))
    picked = tmp_path / "picked.png"
    picked.write_bytes(png_bytes(64, 64, (30, 90, 200)))
    by_id(d, "file").send_keys(str(picked))
    by_id(d, "image-url").send_keys(png_data_uri(48, 48, (40, 160, 60)))
    by_id(d, "add-url").click()
    paste_image(d, "pasted.png", png_bytes(40, 30, (230, 180, 20)))
    wait(d, lambda d: len(image_names(d)) == 4, message="four images listed")
    assert image_names(d)[0] == "dropped.png" and {"picked.png", "linked data URI", "pasted.png"} <= set(image_names(d))

    select_option(d, "detail", "low")
    by_id(d, "prompt").send_keys("What is in these pictures?")
    by_id(d, "send").click()
    wait(d, lambda d: text(d, "status").startswith("done"), message="the answer finished")
    assert text(d, "answer") == "".join(ANSWER) and text(d, "status") == "done (stop)"
    sent = engines["m"].requests[-1]
    assert len(sent.images) == 4 and sent.sampling.max_tokens == 256
    expanded = len(sent.token_ids) + 99 * 4  # the scripted engine's expansion
    assert text(d, "prompt-tokens") == str(expanded) and text(d, "image-tokens") == str(4 * 100)
    assert text(d, "completion-tokens") == str(len(ANSWER))
    assert text(d, "total-tokens") == str(expanded + len(ANSWER))
    assert text(d, "ttft").endswith(("ms", " s")) and text(d, "total-time").endswith(("ms", " s"))

    by_id(d, "show-prompt").click()  # the render endpoint: exact prompt and token count
    wait(d, lambda d: shown(d, "prompt-view"), message="prompt shown")
    prompt = d.execute_script("return document.getElementById('prompt-text').textContent")
    assert prompt.count("<image>") == 4 and "What is in these pictures?" in prompt
    assert text(d, "prompt-meta") == f"{len(sent.token_ids)} tokens · 4 images"
    assert "placeholder" in text(d, "prompt-note")
    assert len(engines["m"].requests) == 1  # rendering generated nothing
    if SCREENSHOT:
        chrome = d.execute_script("return window.outerHeight - window.innerHeight")  # the browser's own bars
        d.set_window_size(1200, d.execute_script("return document.documentElement.scrollHeight") + chrome)
        Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(SCREENSHOT)
        d.set_window_size(1200, 1000)

    d.refresh()  # the key survives a reload
    wait(d, lambda d: "m" in model_ids(d), message="models listed after reload")
    assert by_id(d, "api-key").get_attribute("value") == SECRET


def test_bad_key_shows_a_readable_error(browser, origin, engines) -> None:
    d = browser
    d.get(origin + "/playground")
    d.execute_script(f"localStorage.setItem('{KEY_STORE}', arguments[0])", SECRET)
    d.refresh()
    wait(d, lambda d: "m" in model_ids(d), message="models listed")
    before = len(engines["m"].requests)
    # a key changed without the page reloading its models: the chat request itself answers 401
    d.execute_script("document.getElementById('api-key').value = 'vlm-not-a-key'")
    by_id(d, "prompt").send_keys("Hello?")
    by_id(d, "send").click()
    wait(d, lambda d: shown(d, "error"), message="error shown")
    message = text(d, "error")
    assert message.startswith("Error 401 (invalid_api_key)") and "Incorrect API key provided" in message
    assert "Check the API key" in message and "{" not in message  # readable, not raw JSON
    assert text(d, "status") == "failed" and len(engines["m"].requests) == before

    key = by_id(d, "api-key")  # typed: the model list is reloaded and refused too
    key.clear()
    key.send_keys("vlm-still-wrong")
    wait(d, lambda d: model_ids(d) == [""], message="no models with a bad key")
    assert "Incorrect API key provided" in text(d, "error")
