"""Data URIs: tolerant parsing, limits, log-safe descriptions, and hypothesis over malformed input."""

from __future__ import annotations

import asyncio
import base64
import logging

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.images import imagedata as img
from vlm_gateway.errors import ImageError, InvalidRequest
from vlm_gateway.images.datauri import decode_data_uri, describe_url
from vlm_gateway.images.load import DetailRule, ImageLoader, ImageSource, LoadedImage
from vlm_gateway.settings import ImageSettings

PNG = img.encode("PNG", (40, 30))
B64 = base64.b64encode(PNG).decode()
SAMPLES = [img.encode(f, (24, 16)) for f in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")]


@pytest.mark.parametrize(
    "uri",
    [
        f"data:image/png;base64,{B64}",
        f"data:image/png;base64,{B64.rstrip('=')}",  # padding missing
        "data:image/png;base64," + "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76)),  # MIME lines
        f"data:image/png;base64,  {B64[:10]} \t{B64[10:]}\r\n ",
        f"DATA:IMAGE/PNG;BASE64,{B64}",
        f"data:;base64,{B64}",  # no media type: the bytes decide
        f"data:text/plain;base64,{B64}",  # a lying media type: the bytes decide
        f"data:image/png;name=x.png;base64,{B64}",
        f"data:image/png;base64,{base64.urlsafe_b64encode(PNG).decode()}",
    ],
)
def test_tolerant_base64(uri):
    assert decode_data_uri(uri, max_bytes=10**6) == PNG


def test_percent_encoded_payload():
    from urllib.parse import quote_from_bytes

    assert decode_data_uri("data:image/png," + quote_from_bytes(PNG), max_bytes=10**6) == PNG


@pytest.mark.parametrize(
    "uri",
    ["data:image/png;base64", "data:image/png;base64,A", "data:image/png;base64,AB=C", "data:image/png;base64,*",
     "data:image/png;base64,ééé", "data:image/png;base64,AAAA=AAAA"],
)
def test_malformed_base64(uri):
    with pytest.raises(ImageError) as info:
        decode_data_uri(uri, max_bytes=10**6)
    assert info.value.code == "invalid_image_url"


def test_size_limit_applies_before_decoding():
    with pytest.raises(ImageError) as info:
        decode_data_uri("data:image/png;base64," + "A" * 2_000_000, max_bytes=1_000_000)
    assert info.value.code == "image_too_large"
    with pytest.raises(ImageError):
        decode_data_uri("data:image/png," + "A" * 2_000_000, max_bytes=1_000_000)


def test_describe_url_never_shows_payloads():
    uri = f"data:image/png;base64,{B64}"
    assert describe_url(uri) == f"data:image/png;base64,…({len(B64)} bytes)"
    assert B64[:16] not in describe_url(uri)
    assert describe_url("data:" + "x" * 500) .startswith("data:") and len(describe_url("data:" + "x" * 500)) < 100
    long = "https://example.com/" + "a" * 500 + "?sig=secret"
    assert len(describe_url(long)) < 110 and "secret" not in describe_url(long)
    assert describe_url("https://s3.test/b/k.png?X-Amz-Signature=abc") == "https://s3.test/b/k.png?…"
    assert describe_url("ftp:" + B64) == f"ftp:…({len(B64) + 4} chars)"
    assert describe_url(B64) == f"…({len(B64)} chars)"  # a bare payload without its data: prefix
    assert "\n" not in describe_url("https://example.com/\nInjected: header")
    assert describe_url("http://user:s3cret@example.com/a.png?x=1#frag") == "http://…@example.com/a.png?…"
    assert describe_url("https://example.com/a.png#token=abc") == "https://example.com/a.png"
    assert describe_url("https://example.com/a@b.png") == "https://example.com/a@b.png"  # (in the path)
    assert describe_url("https://user:p@ss@host.example/x.png") == "https://…@host.example/x.png"  # the last @


async def test_logs_and_errors_carry_no_payload(session, caplog, image_server):
    caplog.set_level(logging.DEBUG)
    loader = ImageLoader(ImageSettings(allow_loopback=True), session)
    good = f"data:image/png;base64,{B64}"
    bad = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 3000).decode()
    await loader.load([ImageSource(good), ImageSource(image_server.url("/files/ok.png?k=logs"))], DetailRule())
    errors = []
    for url in (bad, "ftp:" + B64, image_server.url("/files/page.png"), image_server.raw_url("/short-declared")):
        with pytest.raises(ImageError) as info:
            await loader.load([ImageSource(url)], DetailRule())
        errors.append(info.value.message)
    text = "\n".join(errors + [r.getMessage() for r in caplog.records])
    assert B64[:24] not in text and bad[30:60] not in text and "AAAAAAAA" not in text
    assert "\\x" not in text  # no raw bytes echoed from a response either


@st.composite
def malformed_data_uris(draw) -> str:
    """Valid image data URIs, then damaged: cut, flipped, spliced, re-labelled, re-spaced."""
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["cut", "flip", "insert", "delete", "none"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "cut":
            del data[pos:]
        elif action == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[pos:pos] = draw(st.binary(max_size=16))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
    payload = base64.b64encode(bytes(data)).decode()
    if draw(st.booleans()):
        payload = payload.rstrip("=")
    if draw(st.booleans()):
        pos = draw(st.integers(0, len(payload)))
        payload = payload[:pos] + draw(st.sampled_from([" ", "\n", "=", "%", "é", "*", "-", "\x00"])) + payload[pos:]
    header = draw(st.sampled_from(["image/png;base64", "image/jpeg;base64", ";base64", "base64", "image/png",
                                   "text/html;base64", "image/png;charset=utf-8;base64", ""]))
    prefix = draw(st.sampled_from(["data:", "DATA:", "data: ", "data:/", ""]))
    return f"{prefix}{header},{payload}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(uri=malformed_data_uris() | st.text(max_size=200).map(lambda t: "data:" + t))
def test_malformed_data_uris_only_load_or_raise_image_errors(uri):
    async def run():
        async with aiohttp.ClientSession() as session:  # never used: data URIs make no requests
            loader = ImageLoader(ImageSettings(), session)
            return await loader.load([ImageSource(uri, "low", "messages[0].content[0].image_url")], DetailRule())

    try:
        out = asyncio.run(run())
    except InvalidRequest as exc:  # ImageError is an InvalidRequest
        assert exc.param == "messages[0].content[0].image_url" and exc.status == 400
        assert len(exc.message) < 300
    else:
        assert len(out) == 1 and isinstance(out[0], LoadedImage)
        assert max(out[0].width, out[0].height) <= 512
