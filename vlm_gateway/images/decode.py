"""Pillow work, run off the event loop: identify, bomb-check, decode the first frame, resize, encode.

The format is read from the bytes (never from a URL extension or a declared content type) and only the
Pillow plugins for the allowed formats are ever consulted. The header is read first (``Image.open`` is
lazy) and the pixel count checked before any pixel data is decoded; Pillow's own
``DecompressionBombError``/``DecompressionBombWarning`` become 400s as well.
"""

from __future__ import annotations

import base64
import hashlib
import io
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vlm_gateway.engines import ImageFeatures
from vlm_gateway.errors import ImageError
from vlm_gateway.images.features import Preprocessor, image_features
from vlm_gateway.images.resize import DetailRule, target_size

#: Pillow format names accepted (JPEGs with an MPF marker come back as "MPO": reported as jpeg).
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "PPM", "WEBP")
_NAMES = {"MPO": "jpeg"}
_MIME = {
    "png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "bmp": "image/bmp",
    "tiff": "image/tiff", "ppm": "image/x-portable-anymap", "webp": "image/webp",
}
_PLAIN_MODES = ("RGB", "RGBA", "L", "LA")
PNG_COMPRESS_LEVEL = 1  # speed over size: the PNG only travels to a local engine
T = TypeVar("T")


class SizedImage(msgspec.Struct, frozen=True):
    """What the loader hands on: the data URI for the engine and a description of its bytes."""

    url: str
    width: int
    height: int
    format: str  # of the bytes in ``url``: "png" after a resize, else the source format
    sha256: str  # of the bytes in ``url``
    resized: bool
    features: ImageFeatures | None = None  # the model's input made from it, when a preprocessor was given


class ImageInfo(msgspec.Struct, frozen=True):
    """What :func:`identify` reads from bytes the loader would accept."""

    format: str  # "png", "jpeg", … (as ``SizedImage.format``)
    width: int
    height: int
    content_type: str  # "image/png", …


def _ensure_bomb_filter() -> None:
    """Make ``DecompressionBombWarning`` raise (idempotent; re-applied because test runners reset filters)."""
    for action, msg, category, module, _line in warnings.filters:
        if issubclass(Image.DecompressionBombWarning, category):
            if action == "error" and msg is None and module is None:
                return
            break
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"image is too large ({width}x{height} = {width * height} pixels; the limit is {max_pixels})",
        code="image_too_large",
    )


def _data_uri(fmt: str, data: bytes) -> str:
    return f"data:{_MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits a channel


_STRIP_ROWS = 256  # deep images are scaled a strip at a time: a few MB of temporaries, whatever their size


def _eight_bit(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float grey image scaled to 8 bits (Pillow's ``convert`` clips these: a mid-grey
    16-bit PNG would become white). ``I;16`` is scaled by its depth (the top 8 of 16 bits); a 32-bit
    integer image whose values pass 255 is read as 16-bit (most such files hold 16-bit data), else as
    8-bit; a float image whose values stay within 1.0 as 0..1, else as 0..255. Strip by strip, in
    integers where it can: never a float64 copy of the whole image."""
    if im.mode.startswith("I;16"):  # (Pillow has no extrema of I;16B / I;16L: none are needed here)
        shift, scale = 8, None
    elif im.mode == "I":
        shift, scale = (8 if im.getextrema()[1] > 255 else 0), None  # type: ignore[index]
    else:  # "F"
        shift, scale = 0, (255.0 if im.getextrema()[1] <= 1.0 else 1.0)  # type: ignore[index]
    out = np.empty((im.height, im.width), np.uint8)
    for top in range(0, im.height, _STRIP_ROWS):
        strip = np.asarray(im.crop((0, top, im.width, min(top + _STRIP_ROWS, im.height))))
        if scale is not None:
            strip = np.clip(strip * np.float32(scale), 0, 255)
        else:
            strip = np.clip(strip.astype(np.int64) >> shift if shift else strip, 0, 255)
        out[top:top + len(strip)] = strip
    return Image.fromarray(out, "L")


def _oriented(im: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image as it is meant to be seen (its EXIF orientation applied, as the engine applies
    it to bytes it decodes), and ``size`` turned with it by a quarter turn."""
    if im.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return im, size
    oriented = ImageOps.exif_transpose(im)
    return oriented, (size[1], size[0]) if oriented.size != im.size else size


def _normalise_mode(im: Image.Image) -> Image.Image:
    if im.mode in _PLAIN_MODES:
        return im
    if im.mode in _DEEP_MODES:
        return _eight_bit(im)
    alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
    return im.convert("RGBA" if alpha else "RGB")


def _resize(im: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, bytes]:
    im = _normalise_mode(im)
    upscale = size[0] > im.width
    resample = Image.Resampling.BICUBIC if upscale else Image.Resampling.LANCZOS
    out = im.resize(size, resample, reducing_gap=None if upscale else 3.0)
    buf = io.BytesIO()
    out.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out, buf.getvalue()


def _header(im: Image.Image, max_pixels: int) -> tuple[str, int, int]:
    """The format name and size from the header, refused when over ``max_pixels`` (nothing decoded yet)."""
    fmt = _NAMES.get(im.format or "", (im.format or "").lower())
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError("image has no pixels", code="invalid_image")
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    return fmt, width, height


def _process(data: bytes, sha256: str, detail: str, rule: DetailRule, pre: Preprocessor | None,
             max_pixels: int) -> SizedImage:
    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
        fmt, width, height = _header(im, max_pixels)
        if pre is not None:
            pre.check_aspect(width, height)
        size = target_size(width, height, detail, rule)
        if pre is not None and pre.takes(*size):
            return _for_model(im, data, sha256, fmt, size, pre)
        if size == (width, height) and im.mode not in _DEEP_MODES:  # (the engine would clip those to white)
            im.load()  # first frame only: proves the data decodes (truncation, corruption)
            return SizedImage(_data_uri(fmt, data), width, height, fmt, sha256, False)
        if im.format in ("JPEG", "MPO") and size[0] < width:
            im.draft(None, size)  # DCT scaling: decode at ≥ the target size, much faster
        im.load()
        oriented, size = _oriented(im, size)  # the PNG made here has no EXIF: turned before it is made
        _, out = _resize(oriented, size)
    return SizedImage(_data_uri("png", out), size[0], size[1], "png", hashlib.sha256(out).hexdigest(), True)


def _for_model(im: Image.Image, data: bytes, sha256: str, fmt: str, size: tuple[int, int],
               pre: Preprocessor) -> SizedImage:
    """The image at the size the model's processor wants (``pre.size_for`` of the ``detail`` size, as the
    engine would see it: EXIF orientation applied), and the model's input made from those pixels. The
    bytes go unchanged where they are that already; else one resize, here, to a PNG."""
    if im.format in ("JPEG", "MPO"):
        im.draft(None, pre.size_for(*size))  # DCT scaling, to no less than the size wanted
    im.load()
    oriented, size = _oriented(im, size)  # a quarter turn: the detail size turns with it
    grid = pre.size_for(*size)
    if grid == oriented.size and im.mode not in _DEEP_MODES:  # the engine would turn the bytes the same way
        return SizedImage(_data_uri(fmt, data), oriented.width, oriented.height, fmt, sha256, False,
                          image_features(oriented, sha256, pre))
    resized, out = _resize(oriented, grid)
    digest = hashlib.sha256(out).hexdigest()
    return SizedImage(_data_uri("png", out), grid[0], grid[1], "png", digest, True,
                      image_features(resized, digest, pre))


def _identify(data: bytes, max_pixels: int) -> ImageInfo:
    with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
        fmt, width, height = _header(im, max_pixels)
        im.load()  # first frame only, as prepare() does for an image it sends unchanged
    return ImageInfo(fmt, width, height, _MIME[fmt])


def _checked(fn: Callable[..., T], max_pixels: int, *args: Any) -> T:
    """Run ``fn(*args, max_pixels)`` (Pillow work) with every failure turned into an :class:`ImageError`
    (``param`` unset)."""
    _ensure_bomb_filter()
    try:
        return fn(*args, max_pixels)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own check (in Image.open, before ours can read the header) fired: its limit is lower than
        # the setting's. The client is told the limit that applies, not Pillow's internals.
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        raise ImageError(f"image is too large (over {limit} pixels, the limit)", code="image_too_large") from None
    except UnidentifiedImageError:
        allowed = ", ".join(sorted(set(_MIME) | {"jpg"}))
        raise ImageError(
            f"unsupported image format or not an image (allowed: {allowed})", code="invalid_image_format"
        ) from None
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, struct.error…)
        raise ImageError(
            f"image could not be decoded (truncated or corrupt): {type(exc).__name__}", code="invalid_image"
        ) from None


def prepare(data: bytes, sha256: str, detail: str, rule: DetailRule, max_pixels: int,
            pre: Preprocessor | None = None) -> SizedImage:
    """Validate, decode and (if the detail rule asks) resize one image (``sha256``: of ``data``), and with
    ``pre`` make the model's input from it (``vlm_gateway.images.features``). Blocking: call it in a thread.

    Raises :class:`ImageError` (``param`` unset) for anything that is not an allowed, intact image of at
    most ``max_pixels`` pixels.
    """
    return _checked(_process, max_pixels, data, sha256, detail, rule, pre)


def identify(data: bytes, max_pixels: int) -> ImageInfo:
    """The checks of :func:`prepare` without the sizing: would the loader accept these bytes, and as what?
    Blocking: call it in a thread. Raises :class:`ImageError` (``param`` unset) as ``prepare`` does."""
    return _checked(_identify, max_pixels, data)
