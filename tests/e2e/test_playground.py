"""The playground page in headless Chromium against the real gateway (its embedded vLLM engine): the page
loads, lists the models, takes a dropped image, streams an answer of a few tokens with the engine's own
image-token count, shows the rendered prompt, and shows a refused request (too many images) as a
readable message. The same flow as tests/gateway/api/test_playground_browser.py, with a real engine.

The end-to-end gateway has no API keys, so any key is accepted (the 401 path is covered by the
scripted-engine test).
"""

from __future__ import annotations

import pytest

from tests.browser import by_id, chromium, drop_image, image_names, model_ids, select_option, shown, text, wait
from tests.e2e.conftest import EMBEDDED_FAMILY, model_id
from tests.helpers import png_bytes

pytestmark = pytest.mark.engine

MODEL = model_id(EMBEDDED_FAMILY)
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def open_page(d, gateway) -> None:
    d.get(gateway.url + "/")
    wait(d, lambda d: d.current_url.endswith("/playground"))
    key = by_id(d, "api-key")
    key.clear()
    key.send_keys("vlm-any-key")  # no keys configured: any key (or none) is accepted
    wait(d, lambda d: MODEL in model_ids(d), timeout=30, message="models listed")
    select_option(d, "model", MODEL)


def test_page_streams_a_real_answer(browser, gateway) -> None:
    d = browser
    open_page(d, gateway)
    assert not shown(d, "error")
    drop_image(d, "red.png", png_bytes(64, 48, (200, 30, 30)))
    wait(d, lambda d: image_names(d) == ["red.png"])
    select_option(d, "detail", "low")
    tokens = by_id(d, "max-tokens")
    tokens.clear()
    tokens.send_keys(str(MAX_TOKENS))
    by_id(d, "prompt").send_keys("What color is this?")
    by_id(d, "send").click()
    wait(d, lambda d: text(d, "status").startswith(("done", "failed")), timeout=180, message="answer finished")
    assert text(d, "status").startswith("done"), text(d, "error")
    assert not shown(d, "error")
    completion = int(text(d, "completion-tokens"))
    assert 1 <= completion <= MAX_TOKENS  # random weights: the words are noise, the counts are not
    image_tokens = int(text(d, "image-tokens"))
    prompt_tokens = int(text(d, "prompt-tokens"))
    assert image_tokens > 1 and prompt_tokens > image_tokens  # the image is many tokens, not one
    assert text(d, "ttft").endswith(("ms", " s")) and text(d, "total-time").endswith(("ms", " s"))

    by_id(d, "show-prompt").click()
    wait(d, lambda d: shown(d, "prompt-view"), timeout=30, message="prompt shown")
    prompt = d.execute_script("return document.getElementById('prompt-text').textContent")
    assert "What color is this?" in prompt and prompt.count("<|image_pad|>") == 1
    rendered_tokens = int(text(d, "prompt-meta").split(" tokens")[0])
    # Qwen2.5-VL's images are made into its input by the gateway: the ids shown are the ids sent, expanded
    assert rendered_tokens == prompt_tokens
    assert f"({image_tokens} in all)" in text(d, "prompt-note")


def test_refused_request_shows_a_readable_error(browser, gateway) -> None:
    d = browser
    open_page(d, gateway)
    for i in range(5):  # the e2e models take at most 4 images
        drop_image(d, f"img{i}.png", png_bytes(32, 32, (40 * i, 80, 120)))
    wait(d, lambda d: len(image_names(d)) == 5)
    by_id(d, "prompt").send_keys("Too many?")
    by_id(d, "send").click()
    wait(d, lambda d: shown(d, "error"), timeout=60, message="error shown")
    message = text(d, "error")
    assert message.startswith("Error 400") and "at most 4" in message and "{" not in message
