"""Images preprocessed by the gateway into the engine's own model input (vLLM's ``features``).

Sent as images, every request costs vLLM's API server a base64 and Pillow decode, a hash and its
Hugging Face image processor per image, the same work the gateway's loader has just done. For families
whose processor is plain pixel arithmetic (``image_processor`` in ``templates/families.toml``), the
loader instead turns the sized image into the processor's tensors once per content hash, here, and the
engine client sends them as vLLM's ``MultiModalKwargsItem`` under a hash key: the engine's frontend only
unpacks them, and an engine that already holds the key is sent the key alone
(``vlm_gateway.engines.vllm_remote``).

An image whose tensors would exceed ``Preprocessor.max_bytes`` gets none and is loaded as without a
processor: its request goes to the engine as images (a 1024x768 photo is about 100 KB as JPEG but 4.7 MB
as Qwen's patches, more to move and parse than the engine's own processing costs).

The one kind so far, ``merged_patches``, is Qwen2-VL's and Qwen2.5-VL's processor, computed as it is
with vLLM 0.32's defaults (``mm_device_do_normalize``: the pixels travel as raw 0-255 bytes and the
vision tower normalises them): the image in RGB (transparency on white), at ``smart_resize``'s
multiple of ``patch_size * merge_size`` inside the checkpoint's pixel bounds, cut into
``[t*h*w, 3*temporal*patch*patch]`` patches in merge-window order. The loader resizes the image to that
size itself (``Preprocessor.size_for``, one resize with Pillow), so the bytes it would send and the input
it makes are the same pixels: vLLM's processor, which resizes with torchvision, has nothing left to
resize. ``tests/e2e/test_features.py`` checks the tensors against vLLM's own render.

Preprocessing is the checkpoint's (``preprocessor_config.json``); an engine started with different
processor arguments or with ``--no-mm-device-do-normalize`` needs ``preprocess = "engine"`` in the
model's engine settings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Literal

import msgspec
import numpy as np
from PIL import Image

from vlm_gateway.engines import ImageFeatures
from vlm_gateway.errors import ImageError
from vlm_gateway.prompts.families import checkpoint_file

__all__ = ["Preprocessor", "expand", "image_features", "load_preprocessor"]

_EXT_TENSOR = 3  # vLLM's msgpack extension code for a tensor's raw bytes (v1/serial_utils.py)


class Preprocessor(msgspec.Struct, frozen=True):
    """One model's image processor, as plain numbers (hashable: part of the loader's cache key)."""

    kind: Literal["merged_patches"]
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    max_bytes: int = 1024 * 1024  # larger inputs are not made: the image goes to the engine as it is

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the processor resizes an image of this size to. The aspect ratio's bound is
        the source image's (``check_aspect``, once): a size derived from it (the ``detail`` size, the grid
        size itself) may be a little past it by rounding, as the processor's own grid size may."""
        factor = self.patch_size * self.merge_size
        h, w = smart_resize(height, width, factor, self.min_pixels, self.max_pixels, check_aspect=False)
        return w, h

    @staticmethod
    def check_aspect(width: int, height: int) -> None:
        """The processor's bound on the source image: at most 200:1 (else a 400, as the engine would)."""
        if max(height, width) / min(height, width) > MAX_ASPECT:
            raise ImageError(f"image aspect ratio is too extreme ({width}x{height}; the model takes at most "
                             f"{MAX_ASPECT}:1)", code="invalid_image")

    def takes(self, width: int, height: int) -> bool:
        """Is the input for an image of this size within ``max_bytes``?"""
        w, h = self.size_for(width, height)
        return w * h * 3 * self.temporal_patch_size <= self.max_bytes

    @property
    def key(self) -> str:
        """What distinguishes this processor's output from another's for the same pixels."""
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()[:12]


def load_preprocessor(kind: str, checkpoint: str, max_bytes: int = 1024 * 1024) -> Preprocessor:
    """The family's processor kind with the checkpoint's numbers (``preprocessor_config.json``; a missing
    file or field keeps the kind's defaults), making inputs of up to ``max_bytes``."""
    try:
        config = json.loads(checkpoint_file(checkpoint, "preprocessor_config.json").read_text())
    except (FileNotFoundError, ValueError):
        config = {}
    size = config.get("size") or {}
    numbers = {
        "patch_size": config.get("patch_size"),
        "merge_size": config.get("merge_size"),
        "temporal_patch_size": config.get("temporal_patch_size"),
        "min_pixels": config.get("min_pixels") or size.get("shortest_edge"),
        "max_pixels": config.get("max_pixels") or size.get("longest_edge"),
    }
    return msgspec.convert({"kind": kind, "max_bytes": max_bytes, **{k: v for k, v in numbers.items() if v}},
                           Preprocessor)


MAX_ASPECT = 200


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int,
                 check_aspect: bool = True) -> tuple[int, int]:
    """Qwen2-VL's size rule (transformers' ``smart_resize``): both sides multiples of ``factor``, the area
    within [min_pixels, max_pixels], the aspect ratio kept as closely as that allows."""
    if check_aspect:
        Preprocessor.check_aspect(width, height)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _rgb(im: Image.Image) -> Image.Image:
    """vLLM's conversion to RGB: transparency is painted on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.split()[3])
        return out
    return im.convert("RGB")


def _tensor(array: np.ndarray, dtype: str) -> list:
    return [dtype, list(array.shape), msgspec.msgpack.Ext(_EXT_TENSOR, np.ascontiguousarray(array).tobytes())]


def _merged_patches(im: Image.Image, pre: Preprocessor) -> tuple[dict, int, tuple[int, int, int]] | None:
    p, m, t = pre.patch_size, pre.merge_size, pre.temporal_patch_size
    if not pre.takes(im.width, im.height):
        return None
    width, height = pre.size_for(im.width, im.height)
    if (width, height) != im.size:
        im = im.resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # C, H, W
    gh, gw = height // p, width // p
    frames = np.broadcast_to(pixels, (t, *pixels.shape))  # one image = `t` identical frames
    patches = (frames.reshape(1, t, 3, gh // m, m, p, gw // m, m, p)
               .transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
               .reshape(gh * gw, 3 * t * p * p))
    item = {
        "pixel_values": {"data": _tensor(patches, "uint8"),
                         "field": ["flat", {"keep_on_cpu": False, "slices": [[[0, gh * gw, None]]], "dim": 0}]},
        "image_grid_thw": {"data": _tensor(np.array([1, gh, gw], dtype=np.int64), "int64"),
                           "field": ["batched", {"keep_on_cpu": True}]},
    }
    return item, gh * gw // (m * m), (1, gh, gw)


def image_features(im: Image.Image, sha256: str, pre: Preprocessor) -> ImageFeatures | None:
    """The engine's input for one decoded image, as the engine shows it (EXIF orientation applied), named
    by ``sha256`` of the bytes it came from; None when it would be larger than ``pre.max_bytes``.
    Blocking: call it in a thread."""
    made = _merged_patches(_rgb(im), pre)
    if made is None:
        return None
    item, tokens, grid = made
    data = base64.b64encode(msgspec.msgpack.encode(item)).decode("ascii")
    # never a vLLM hash (64 hex digits): its own cache entries for sent images stay apart from these
    key = f"vlmgw-{pre.kind}-{pre.key}-{grid[1]}x{grid[2]}-{sha256}"
    return ImageFeatures(key=key, tokens=tokens, data=data)


def expand(token_ids: list[int], image_token_id: int, features: list[ImageFeatures]) -> tuple[list[int], list[int]]:
    """The prompt as the engine's processor would have expanded it: each image's one placeholder token
    repeated to the image's token count, and where each image's run starts. ``ValueError`` when the
    prompt does not hold one placeholder per image."""
    out: list[int] = []
    offsets: list[int] = []
    start = 0
    for image in features:
        at = token_ids.index(image_token_id, start)  # ValueError when missing
        out += token_ids[start:at]
        offsets.append(len(out))
        out += [image_token_id] * image.tokens
        start = at + 1
    if image_token_id in token_ids[start:]:
        raise ValueError("more image placeholders than images")
    out += token_ids[start:]
    return out, offsets
