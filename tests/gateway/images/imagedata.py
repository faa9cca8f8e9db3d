"""Test images, built with Pillow or by hand (bombs, truncations, headers that lie)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image


def encode(fmt: str, size=(64, 48), mode="RGB", color="red", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` × ``height`` with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def png_bomb(width: int, height: int) -> bytes:
    """A real, valid decompression bomb: an all-black RGB PNG, compressed row by row (tiny file)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width * 3 + 1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose logical screen and first frame claim ``width`` × ``height``."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return head + frame + b"\x3b"


def multipage_tiff(sizes) -> bytes:
    colors = ["red", "blue", "green", "white"][: len(sizes)]
    frames = [Image.new("RGB", s, c) for s, c in zip(sizes, colors, strict=True)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("P", (40, 30), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def big_jpeg(width=5472, height=3648) -> bytes:
    """A ~20-megapixel JPEG with some structure (gradients), cheap to make."""
    small = Image.linear_gradient("L").resize((width // 8, height // 8))
    im = Image.merge("RGB", (small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT), small.rotate(90)))
    im = im.resize((width, height), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def noise(fmt: str, size=(300, 200), **save) -> bytes:
    """An image that does not compress (so a truncated copy really misses pixel data)."""
    im = Image.merge("RGB", [Image.effect_noise(size, 80) for _ in range(3)])
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def truncated(fmt: str) -> bytes:
    data = noise(fmt)
    return data[: len(data) // 2]
