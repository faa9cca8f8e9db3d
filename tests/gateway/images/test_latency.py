"""The event loop stays free while big images are decoded, hashed, resized and encoded.

Deterministic, not timed: every call into Pillow (``Image.open``) and every decode/hash step of the
loader is recorded with the thread it ran on; none may run on the event loop's thread, except the
decoding and hashing of data up to ``INLINE_BYTES`` (a hop to a thread costs more than that work). (A timing test
— "the loop never paused for more than N ms" — fails on a loaded CI machine now and then and proves
less.)
"""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from tests.gateway.images import imagedata as img
from tests.gateway.images.conftest import FILES
from vlm_gateway.images import load as load_module
from vlm_gateway.images.load import DetailRule, ImageLoader, ImageSource
from vlm_gateway.settings import ImageSettings


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return img.big_jpeg()  # 5472 x 3648 ≈ 20 MP


@pytest.fixture
def threads(monkeypatch) -> list[tuple[str, bool]]:
    """(what, ran on the loop's thread) for each heavy call made while the test runs; decoding and hashing
    of small data (up to ``INLINE_BYTES``), which may run on the loop, as ("small", on loop)."""
    seen: list[tuple[str, bool]] = []
    loop_thread = threading.current_thread()

    def spy(name: str, fn):
        def wrapper(*args, **kwargs):
            small = name in ("_decode_uri", "_digest") and len(args[0]) <= load_module.INLINE_BYTES
            seen.append(("small" if small else name, threading.current_thread() is loop_thread))
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(Image, "open", spy("Image.open", Image.open))
    for name in ("prepare", "_decode_uri", "_digest"):
        monkeypatch.setattr(load_module, name, spy(name, getattr(load_module, name)))
    return seen


def assert_all_off_the_loop(seen: list[tuple[str, bool]], expected: set[str]) -> None:
    assert {name for name, _ in seen} >= expected, seen
    assert [name for name, on_loop in seen if on_loop and name != "small"] == []


async def test_small_images_are_decoded_and_hashed_on_the_loop(session, threads):
    """Below ``INLINE_BYTES`` the work is tens of microseconds: no thread hop (the pixels still are)."""
    uri = img.data_uri(img.encode("PNG", (64, 48)))
    await ImageLoader(ImageSettings(), session).load([ImageSource(uri)], DetailRule())
    assert ("small", True) in threads and ("prepare", False) in threads


@pytest.mark.parametrize("detail, rule", [("auto", DetailRule()), ("low", DetailRule()),
                                          ("high", DetailRule(high_max_side=2048))])
async def test_20_megapixel_jpeg_is_decoded_off_the_loop(big_jpeg, session, threads, detail, rule):
    uri = img.data_uri(big_jpeg, "image/jpeg")
    out = await ImageLoader(ImageSettings(), session).load([ImageSource(uri, detail)], rule)
    assert out[0].width in (5472, 512, 2048)
    assert_all_off_the_loop(threads, {"_decode_uri", "prepare", "Image.open"})


async def test_many_images_at_once_are_decoded_off_the_loop(big_jpeg, session, threads):
    noisy = img.noise("JPEG", (1600, 1200))
    sources = [ImageSource(img.data_uri(noisy, "image/jpeg"), d) for d in ("low", "high", "auto")]
    sources += [ImageSource(img.data_uri(img.encode("PNG", (1500 + i, 1000), color=(i, 0, 0))), "low")
                for i in range(9)]
    sources.append(ImageSource(img.data_uri(big_jpeg, "image/jpeg"), "low"))
    out = await ImageLoader(ImageSettings(), session).load(sources, DetailRule())
    assert len(out) == 13
    assert sum(name == "prepare" for name, _ in threads) == 13
    assert_all_off_the_loop(threads, {"_decode_uri", "prepare", "Image.open"})


async def test_big_fetched_image_is_hashed_and_decoded_off_the_loop(big_jpeg, session, image_server, threads):
    FILES["big.jpg"] = (big_jpeg, "image/jpeg")
    settings = ImageSettings(allow_loopback=True)
    out = await ImageLoader(settings, session).load([ImageSource(image_server.url("/files/big.jpg"))], DetailRule())
    assert out[0].width == 5472 and len(big_jpeg) < settings.max_image_bytes
    assert_all_off_the_loop(threads, {"_digest", "prepare", "Image.open"})


def test_the_spy_notices_a_call_on_the_loop_thread(threads):
    load_module.prepare(img.encode("PNG"), "0" * 64, "auto", DetailRule(), 50_000_000)
    assert ("prepare", True) in threads
