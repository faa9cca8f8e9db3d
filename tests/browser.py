"""Headless Chromium for the playground's page tests (Selenium with Debian's ``chromium`` and
``chromium-driver``; Selenium never downloads a browser here).

``need_browser()`` skips a test when the browser, its driver or the ``selenium`` package is missing,
except under CI (``$CI`` set), where that fails the test. ``chromium()`` yields a driver.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the `test` extra not installed
    webdriver = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
KEY_STORE = "vlm-gateway.playground.api-key"  # where the page keeps the API key (localStorage)


def need_browser() -> None:
    missing = [name for name, found in (("chromium", CHROMIUM), ("chromedriver (chromium-driver)", CHROMEDRIVER),
                                        ("the selenium package", webdriver)) if not found]
    if missing:
        reason = (f"no headless browser: {', '.join(missing)} not installed "
                  "(apt-get install -y chromium chromium-driver; pip install selenium)")
        if os.environ.get("CI"):
            pytest.fail(reason + " - required under CI")
        pytest.skip(reason)


@contextlib.contextmanager
def chromium(width: int = 1200, height: int = 1000) -> Iterator[Any]:
    need_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = 20, message: str = ""):
    """Until ``condition(driver)`` holds. An element the page re-rendered between finding and reading it
    (the model list is rebuilt on every key stroke) is read again at the next poll."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=[StaleElementReferenceException]).until(lambda d: condition(d), message)


def by_id(driver, element_id: str):
    return driver.find_element(By.ID, element_id)


def text(driver, element_id: str) -> str:
    return by_id(driver, element_id).text


def shown(driver, element_id: str) -> bool:
    return by_id(driver, element_id).is_displayed()


def model_ids(driver) -> list[str]:
    return [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#model option")]


def image_names(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#images .name")]


_DROP = """
const [name, b64] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, {type: "image/png"}));
const zone = document.getElementById("drop");
for (const type of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
}
"""


def drop_image(driver, name: str, png: bytes) -> None:
    """Drop a PNG file on the page's drop zone, as a user dragging it from their files would."""
    driver.execute_script(_DROP, name, base64.b64encode(png).decode())


def select_option(driver, select_id: str, value: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{select_id} option[value='{value}']").click()


_PASTE = """
const [name, b64] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, {type: "image/png"}));
document.getElementById("prompt").dispatchEvent(
  new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
"""


def paste_image(driver, name: str, png: bytes) -> None:
    """Paste a PNG into the prompt box, as Ctrl+V with an image on the clipboard would."""
    driver.execute_script(_PASTE, name, base64.b64encode(png).decode())
