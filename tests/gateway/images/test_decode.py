"""Decoding: formats from the bytes, bombs, truncation, frames, modes, the detail rule."""

from __future__ import annotations

import base64
import hashlib
import io
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.gateway.images import imagedata as img
from vlm_gateway.errors import ImageError
from vlm_gateway.images import decode
from vlm_gateway.images.load import DetailRule, ImageLoader, ImageSource
from vlm_gateway.images.resize import effective_detail, target_size
from vlm_gateway.settings import ImageSettings

RULE = DetailRule()
MAX = ImageSettings().max_pixels
FORMATS = [("PNG", "png"), ("JPEG", "jpeg"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff"), ("PPM", "ppm"),
           ("WEBP", "webp")]


def prepare(data: bytes, detail: str, rule: DetailRule, max_pixels: int) -> decode.SizedImage:
    return decode.prepare(data, hashlib.sha256(data).hexdigest(), detail, rule, max_pixels)


def payload(url: str) -> bytes:
    return base64.b64decode(url.split(",", 1)[1])


@pytest.mark.parametrize("pil_format, name", FORMATS)
def test_allowed_formats_pass_through_unchanged(pil_format, name):
    data = img.encode(pil_format, (120, 80))
    out = prepare(data, "auto", RULE, MAX)
    assert (out.width, out.height, out.format, out.resized) == (120, 80, name, False)
    assert payload(out.url) == data


@pytest.mark.parametrize("pil_format, name", FORMATS)
def test_allowed_formats_resize_to_png(pil_format, name):
    out = prepare(img.encode(pil_format, (1200, 800)), "low", RULE, MAX)
    assert (out.width, out.height, out.format, out.resized) == (512, 341, "png", True)
    assert out.url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(payload(out.url))).size == (512, 341)


@pytest.mark.parametrize("pil_format", ["ICO", "TGA", "PCX", "SGI", "DDS", "QOI", "EPS", "PDF"])
def test_other_pillow_formats_are_refused(pil_format):
    try:
        data = img.encode(pil_format, (32, 32))
    except (KeyError, OSError, ValueError):
        pytest.skip(f"this Pillow cannot write {pil_format}")
    with pytest.raises(ImageError) as info:
        prepare(data, "auto", RULE, MAX)
    assert info.value.code == "invalid_image_format"


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"%PDF-1.4\n", b"\x89PNG\r\n\x1a\n",
     b"GIF89a", b"BM", b"\xff\xd8\xff", b"P6\n", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"],
)
def test_non_images_and_stubs_are_refused(data):
    with pytest.raises(ImageError):
        prepare(data, "auto", RULE, MAX)


@pytest.mark.parametrize("pil_format", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "PPM", "WEBP"])
def test_truncated_files_are_refused(pil_format):
    with pytest.raises(ImageError) as info:
        prepare(img.truncated(pil_format), "auto", RULE, MAX)
    assert info.value.code in ("invalid_image", "invalid_image_format")


def test_pixel_limit_is_checked_from_the_header():
    with pytest.raises(ImageError) as info:
        prepare(img.png_header_only(10_000, 6_000), "auto", RULE, MAX)  # 60 MP, no pixel data at all
    assert info.value.code == "image_too_large" and "60000000" in info.value.message
    with pytest.raises(ImageError) as info:
        prepare(img.encode("PNG", (100, 100)), "auto", RULE, 9_999)
    assert info.value.code == "image_too_large"


def test_a_real_bomb_is_refused_before_decoding():
    with pytest.raises(ImageError) as info:
        prepare(img.png_bomb(8000, 8000), "auto", RULE, MAX)
    assert info.value.code == "image_too_large"


def test_pillow_bomb_error_becomes_a_400():
    # 4.3 GP: over twice Pillow's MAX_IMAGE_PIXELS, Pillow raises inside Image.open
    with pytest.raises(ImageError) as info:
        prepare(img.gif_header_only(65535, 65535), "auto", RULE, 10**12)
    assert info.value.code == "image_too_large"
    # the client is told the limit that applies (Pillow's, lower than the setting), not Pillow's wording
    assert info.value.message == f"image is too large (over {Image.MAX_IMAGE_PIXELS} pixels, the limit)"


def test_pillow_bomb_error_names_the_setting_when_it_is_the_lower_limit():
    with pytest.raises(ImageError) as info:
        prepare(img.gif_header_only(65535, 65535), "auto", RULE, 1_000_000)
    assert info.value.message == "image is too large (over 1000000 pixels, the limit)"


def test_pillow_bomb_warning_becomes_a_400():
    # 100 MP: over Pillow's MAX_IMAGE_PIXELS (~89 MP) but under twice it: Pillow only warns
    assert Image.MAX_IMAGE_PIXELS < 100_000_000 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError) as info:
        prepare(img.png_header_only(10_000, 10_000), "auto", RULE, 10**12)
    assert info.value.code == "image_too_large" and "DOS" not in info.value.message


def test_multi_frame_images_use_the_first_frame():
    tiff = img.multipage_tiff([(30, 20), (4000, 4000)])
    out = prepare(tiff, "auto", RULE, 1_000)  # the big second page is never decoded or counted
    assert (out.width, out.height) == (30, 20)
    gif = img.animated_gif()
    out = prepare(gif, "auto", RULE, MAX)
    assert (out.width, out.height, out.format) == (40, 30, "gif") and payload(out.url) == gif
    out = prepare(gif, "low", DetailRule(low_max_side=20), MAX)
    assert Image.open(io.BytesIO(payload(out.url))).n_frames == 1


@pytest.mark.parametrize(
    "mode, fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("L", "PNG"), ("1", "PNG"), ("I;16", "PNG"),
                  ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "JPEG"), ("I", "TIFF"), ("F", "TIFF")],
)
def test_every_mode_can_be_resized(mode, fmt):
    data = img.encode(fmt, (900, 600), mode=mode, color=None if mode in ("I;16", "I", "F") else "white")
    out = prepare(data, "low", RULE, MAX)
    im = Image.open(io.BytesIO(payload(out.url)))
    assert im.size == (512, 341) and im.mode in ("RGB", "RGBA", "L", "LA")


@pytest.mark.parametrize("mode, fmt, value, grey", [
    ("I;16", "PNG", 30000, 117), ("I", "TIFF", 30000, 117), ("I", "TIFF", 200, 200), ("F", "TIFF", 0.5, 127),
    ("I;16", "PNG", 255, 0),  # a near-black 16-bit image is near-black (its depth says so, not its values)
])
@pytest.mark.parametrize("detail", ["low", "auto"])
def test_deep_images_are_scaled_to_eight_bits_not_clipped(mode, fmt, value, grey, detail):
    """A mid-grey 16-bit PNG reaches the engine mid-grey (Pillow's convert, and so the engine's, would make
    it white): it is made into an 8-bit PNG here even where no resize is asked for."""
    data = img.encode(fmt, (900, 600), mode=mode, color=value)
    out = prepare(data, detail, RULE, MAX)
    im = Image.open(io.BytesIO(payload(out.url)))
    assert (out.format, im.mode, im.convert("L").getpixel((5, 5))) == ("png", "L", grey)


def test_a_big_endian_16_bit_tiff_is_scaled_too():
    """A "MM" TIFF of 16-bit greys opens as ``I;16B``, a mode Pillow gives no extrema of."""
    import numpy as np

    buf = io.BytesIO()
    Image.frombytes("I;16B", (64, 48), np.full((48, 64), 30000, ">u2").tobytes()).save(buf, "TIFF")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16B"
    out = prepare(buf.getvalue(), "auto", RULE, MAX)
    assert Image.open(io.BytesIO(payload(out.url))).convert("L").getpixel((5, 5)) == 117


def test_a_deep_image_is_scaled_without_a_float_copy_of_it():
    """16 M pixels of 16-bit grey: scaled strip by strip, so the temporaries stay a few MB (a float64 copy of
    the whole image was 128 MB, and several decodes run at once)."""
    import tracemalloc

    data = img.encode("PNG", (4000, 4000), mode="I;16", color=30000)
    tracemalloc.start()
    try:
        prepare(data, "low", RULE, 20_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, peak  # the 16 MB 8-bit result, its PNG, and a strip


@pytest.mark.parametrize("orientation, shown", [(6, (384, 512)), (3, (512, 384)), (1, (512, 384))])
def test_a_resized_photo_keeps_its_exif_orientation(orientation, shown):
    """The PNG a resize makes has no EXIF: the photo is turned as its EXIF says before it is made."""
    im = Image.new("RGB", (1200, 900), "white")
    im.paste((255, 0, 0), (0, 0, 600, 450))  # red in the stored image's top-left quarter
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    out = prepare(buf.getvalue(), "low", RULE, MAX)
    sent = Image.open(io.BytesIO(payload(out.url))).convert("RGB")
    assert (out.width, out.height) == sent.size == shown
    red = {1: (0, 0), 3: (shown[0] - 1, shown[1] - 1), 6: (shown[0] - 1, 0)}[orientation]  # where it is seen
    assert sent.getpixel(red)[0] > 200 and sent.getpixel(red)[1] < 60


def test_alpha_survives_a_resize():
    out = prepare(img.encode("PNG", (900, 600), mode="RGBA", color=(255, 0, 0, 10)), "low", RULE, MAX)
    assert Image.open(io.BytesIO(payload(out.url))).getpixel((5, 5))[3] == 10


def test_camera_jpeg_with_mpf_reports_jpeg():
    im1, im2 = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    buf = io.BytesIO()
    im1.save(buf, "MPO", save_all=True, append_images=[im2])
    out = prepare(buf.getvalue(), "auto", RULE, MAX)
    assert out.format == "jpeg" and out.url.startswith("data:image/jpeg;")


@pytest.mark.parametrize(
    "size, detail, rule, expected",
    [
        ((1200, 800), "low", RULE, (512, 341)),
        ((800, 1200), "low", RULE, (341, 512)),
        ((400, 300), "low", RULE, (400, 300)),  # never scaled up for detail
        ((400, 300), "auto", RULE, (400, 300)),
        ((4000, 3000), "auto", RULE, (4000, 3000)),  # auto → high; no high limits in the rule
        ((4000, 3000), "high", DetailRule(high_max_side=2048), (2048, 1536)),
        ((4000, 3000), "auto", DetailRule(high_max_side=2048), (2048, 1536)),
        ((4000, 3000), "high", DetailRule(high_max_pixels=1_000_000), (1154, 866)),
        ((4000, 3000), "high", DetailRule(high_max_side=1000, high_max_pixels=10**9), (1000, 750)),
        ((20, 10), "auto", DetailRule(min_pixels=3136), (80, 40)),  # scaled up to the minimum
        ((20, 10), "low", DetailRule(low_max_side=50, min_pixels=10_000), (50, 25)),  # the side wins
        ((1, 10_000), "low", RULE, (1, 512)),
        ((600, 600), "auto", RULE, (600, 600)),
    ],
)
def test_target_size(size, detail, rule, expected):
    assert target_size(*size, detail, rule) == expected


def test_auto_is_low_when_it_already_fits():
    assert effective_detail(512, 300, "auto", RULE) == "low"
    assert effective_detail(513, 300, "auto", RULE) == "high"


def test_a_familys_own_auto_is_read_from_its_data():
    """``auto = "low"`` in a family's entry of families.toml makes ``auto`` mean low for that family."""
    from vlm_gateway.images.inputs import detail_rule
    from vlm_gateway.prompts.families import FamilyDetail

    low = detail_rule(FamilyDetail(scaling="dynamic", low_max_side=512, auto="low", patch_px=28))
    assert target_size(2000, 1500, "auto", low) == target_size(2000, 1500, "low", low) == (512, 384)
    high = detail_rule(FamilyDetail(scaling="dynamic", low_max_side=512, patch_px=28))
    assert target_size(2000, 1500, "auto", high) == (2000, 1500)


@given(
    st.integers(1, 20_000), st.integers(1, 20_000), st.sampled_from(["auto", "low", "high"]),
    st.builds(DetailRule, low_max_side=st.integers(16, 2048), high_max_side=st.none() | st.integers(16, 8192),
              high_max_pixels=st.none() | st.integers(256, 50_000_000), min_pixels=st.none() | st.integers(1, 100_000)),
)
def test_target_size_respects_the_rule(w, h, detail, rule):
    tw, th = target_size(w, h, detail, rule)
    assert tw >= 1 and th >= 1
    mode = effective_detail(w, h, detail, rule)
    side = rule.low_max_side if mode == "low" else rule.high_max_side
    if side:
        assert max(tw, th) <= max(side, 1)
    if mode == "high" and rule.high_max_pixels and min(tw, th) > 1:
        assert tw * th <= rule.high_max_pixels
    if (tw, th) != (w, h) and min(w, h) >= 64 and min(tw, th) >= 64:  # aspect kept (to rounding)
        assert math.isclose(tw / th, w / h, rel_tol=0.05)


async def test_loader_resizes_per_source_detail_and_caches_results(session):
    loader = ImageLoader(ImageSettings(), session)
    uri = img.data_uri(img.encode("JPEG", (2000, 1000)), "image/jpeg")
    rule = DetailRule(high_max_side=1024)
    out = await loader.load([ImageSource(uri, "low"), ImageSource(uri, "high"), ImageSource(uri, "auto")], rule)
    assert [(o.width, o.height) for o in out] == [(512, 256), (1024, 512), (1024, 512)]
    again = await loader.load([ImageSource(uri, "low")], rule)
    assert again[0] == out[0]
    stats = loader.stats()
    assert stats["result_hits"] >= 1 and stats["data_uris"] == 4
    other = await loader.load([ImageSource(uri, "low")], DetailRule(low_max_side=256))  # rule is in the key
    assert other[0].width == 256
