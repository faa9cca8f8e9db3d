"""Images made into Qwen2-VL's model input by the gateway (``vlm_gateway.images.features``): the size rule
against transformers' own code, the patch layout against a plain loop, colour and orientation as vLLM
handles them, the wire encoding, and the prompt's expansion. tests/e2e/test_features.py checks the
result against vLLM's own processor."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import math
from importlib.util import find_spec
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.gateway.images import imagedata as img
from vlm_gateway.engines import ImageFeatures
from vlm_gateway.errors import ImageError
from vlm_gateway.images import decode
from vlm_gateway.images.features import Preprocessor, expand, image_features, load_preprocessor, smart_resize
from vlm_gateway.images.load import DetailRule, ImageLoader, ImageSource
from vlm_gateway.settings import ImageSettings

PRE = Preprocessor("merged_patches", min_pixels=3136, max_pixels=12845056)


def transformers_smart_resize():
    """transformers' own ``smart_resize`` (Qwen2-VL), read from its source: importing the module needs a
    working torchvision, which the CPU test environment does not have."""
    spec = find_spec("transformers")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "models" / "qwen2_vl" / "image_processing_qwen2_vl.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize")
    namespace: dict = {"math": math}
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)  # noqa: S102 - the installed library's code
    return namespace["smart_resize"]


REFERENCE = transformers_smart_resize()


@given(st.integers(1, 4000), st.integers(1, 4000))
def test_size_rule_is_transformers_own(height: int, width: int) -> None:
    if max(height, width) / min(height, width) > 200:
        with pytest.raises(ImageError):
            smart_resize(height, width, 28, 3136, 12845056)
        return
    assert smart_resize(height, width, 28, 3136, 12845056) == REFERENCE(height, width, 28, 3136, 12845056)


def decode_item(features: ImageFeatures) -> dict:
    """The base64 msgpack ``MultiModalKwargsItem`` as vLLM's decoder reads it: per field its tensor as
    (dtype, shape, bytes) and its field description."""
    item = msgspec.msgpack.decode(base64.b64decode(features.data))
    out = {}
    for name, value in item.items():
        dtype, shape, ext = value["data"]
        assert isinstance(ext, msgspec.msgpack.Ext) and ext.code == 3
        out[name] = (np.frombuffer(ext.data, dtype=dtype).reshape(shape), value["field"])
    return out


def reference_patches(pixels: np.ndarray, p: int = 14, m: int = 2, t: int = 2) -> np.ndarray:
    """Qwen2-VL's patch order, one patch at a time: merge windows row by row, the window's m x m patches
    row by row, each patch as channel, frame, row, column."""
    height, width, _ = pixels.shape
    gh, gw = height // p, width // p
    rows = []
    for by in range(gh // m):
        for bx in range(gw // m):
            for i in range(m):
                for j in range(m):
                    y, x = (by * m + i) * p, (bx * m + j) * p
                    block = pixels[y:y + p, x:x + p, :].transpose(2, 0, 1)  # C, p, p
                    rows.append(np.stack([block] * t, axis=1).reshape(-1))  # C, T, p, p
    return np.stack(rows)


def test_patches_are_in_qwen_order_as_raw_bytes() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)  # already a multiple of 28: no resize
    features = image_features(Image.fromarray(pixels), "0" * 64, PRE)
    assert features is not None and features.tokens == (4 * 6) // 4
    item = decode_item(features)
    values, field = item["pixel_values"]
    assert values.dtype == np.uint8 and values.shape == (24, 1176)
    assert field == ["flat", {"keep_on_cpu": False, "slices": [[[0, 24, None]]], "dim": 0}]
    assert np.array_equal(values, reference_patches(pixels))
    grid, field = item["image_grid_thw"]
    assert grid.tolist() == [1, 4, 6] and grid.dtype == np.int64 and field == ["batched", {"keep_on_cpu": True}]


def test_an_image_off_the_grid_is_resized_bicubic_to_the_size_rule() -> None:
    rng = np.random.default_rng(2)
    im = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    features = image_features(im, "0" * 64, PRE)
    values, _ = decode_item(features)["pixel_values"]
    expected = reference_patches(np.asarray(im.resize((56, 56), Image.Resampling.BICUBIC)))
    assert np.array_equal(values, expected) and features.tokens == 4


def test_transparency_is_painted_on_white_as_vllm_does() -> None:
    rgba = Image.new("RGBA", (56, 56), (200, 10, 10, 0))  # fully transparent
    values, _ = decode_item(image_features(rgba, "0" * 64, PRE))["pixel_values"]
    assert (values == 255).all()
    grey = Image.new("L", (56, 56), 77)
    values, _ = decode_item(image_features(grey, "0" * 64, PRE))["pixel_values"]
    assert (values == 77).all()


def test_exif_orientation_is_applied_as_the_engine_applies_it() -> None:
    im = Image.new("RGB", (84, 56), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: shown 56 wide, 84 high
    data = img.encode("JPEG", (84, 56), exif=exif)
    sized = decode.prepare(data, hashlib.sha256(data).hexdigest(), "auto", DetailRule(), 10**8, PRE)
    assert (sized.width, sized.height, sized.resized) == (56, 84, False)  # on the grid once turned: as sent
    assert decode_item(sized.features)["image_grid_thw"][0].tolist() == [1, 6, 4]
    assert im.size == (84, 56)


def test_a_16_bit_image_is_the_models_input_in_its_greys() -> None:
    data = img.encode("PNG", (56, 56), mode="I;16", color=30000)  # on the grid: no resize asked for
    sized = decode.prepare(data, hashlib.sha256(data).hexdigest(), "auto", DetailRule(), 10**8, PRE)
    values, _ = decode_item(sized.features)["pixel_values"]
    assert sized.resized and sized.format == "png"  # re-made at 8 bits: the engine would clip the bytes
    assert (values == 117).all()


def test_the_loader_resizes_once_to_the_processors_size() -> None:
    """The engine is sent pixels already at its processor's size, so its own resize (torchvision) has
    nothing to do, and the gateway's input is made from the very pixels it sends."""
    data = img.noise("PNG", (300, 200))
    sized = decode.prepare(data, hashlib.sha256(data).hexdigest(), "auto", DetailRule(), 10**8, PRE)
    assert (sized.width, sized.height, sized.resized) == (308, 196, True)
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(sized.url.split(",")[1]))).convert("RGB"))
    values, _ = decode_item(sized.features)["pixel_values"]
    assert np.array_equal(values, reference_patches(sent))
    assert sized.features.key.endswith(sized.sha256)  # named by the bytes sent


@pytest.mark.parametrize("size, detail, grid", [
    ((6000, 31), "high", (5992, 28)),  # 193:1, whose grid size (214:1) the processor takes as it makes it
    ((1990, 10), "low", (896, 28)),  # 199:1, whose low-detail size (512x2) is 256:1 by rounding
])
def test_the_aspect_bound_is_the_source_images(size, detail, grid) -> None:
    """The processor refuses a source image past 200:1, once: a size derived from an image within it (the
    ``detail`` size, the grid size) is not refused for rounding past it."""
    data = img.encode("PNG", size)
    rule = DetailRule(low_max_side=512, high_max_pixels=12845056, min_pixels=3136)  # Qwen's entry
    sized = decode.prepare(data, hashlib.sha256(data).hexdigest(), detail, rule, 10**8, PRE)
    assert (sized.width, sized.height) == grid and sized.features is not None
    if detail == "high":
        assert grid == REFERENCE(size[1], size[0], 28, 3136, 12845056)[::-1]  # as transformers sizes the source
    wide = img.encode("PNG", (402, 2))
    with pytest.raises(ImageError, match="aspect ratio"):
        decode.prepare(wide, hashlib.sha256(wide).hexdigest(), detail, rule, 10**8, PRE)


def test_keys_differ_by_content_processor_and_size() -> None:
    im = Image.new("RGB", (56, 56))
    a = image_features(im, "a" * 64, PRE)
    assert a.key == image_features(im, "a" * 64, PRE).key
    assert a.key != image_features(im, "b" * 64, PRE).key
    assert a.key != image_features(im, "a" * 64, Preprocessor("merged_patches", min_pixels=6272)).key
    assert len(a.key) != 64  # never mistaken for one of vLLM's own hashes


def test_inputs_over_the_byte_bound_are_not_made() -> None:
    big = Image.new("RGB", (1024, 768))
    assert image_features(big, "0" * 64, PRE) is None  # 4.7 MB of patches
    assert image_features(big, "0" * 64, Preprocessor("merged_patches", max_bytes=8 << 20))
    data = img.encode("JPEG", (1024, 768))  # loaded as without a processor: the bytes as they came
    sized = decode.prepare(data, hashlib.sha256(data).hexdigest(), "high", DetailRule(), 10**8, PRE)
    assert (sized.features, sized.resized, sized.format) == (None, False, "jpeg")


def test_expand_repeats_each_placeholder_to_its_image_tokens() -> None:
    a, b = ImageFeatures("a", 3, ""), ImageFeatures("b", 2, "")
    assert expand([1, 9, 2, 9, 3], 9, [a, b]) == ([1, 9, 9, 9, 2, 9, 9, 3], [1, 5])
    with pytest.raises(ValueError):
        expand([1, 9, 2], 9, [a, b])  # fewer placeholders than images
    with pytest.raises(ValueError):
        expand([1, 9, 2, 9], 9, [a])  # more


def test_the_checkpoint_numbers_are_read_in_either_spelling(tmp_path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
        "size": {"shortest_edge": 100, "longest_edge": 999}}))
    assert load_preprocessor("merged_patches", str(tmp_path)) == Preprocessor(
        "merged_patches", patch_size=16, min_pixels=100, max_pixels=999)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 5, "max_pixels": 50}))
    assert load_preprocessor("merged_patches", str(tmp_path), max_bytes=7) == Preprocessor(
        "merged_patches", min_pixels=5, max_pixels=50, max_bytes=7)


@pytest.fixture
async def session():
    import aiohttp

    async with aiohttp.ClientSession() as s:
        yield s


async def test_the_loader_makes_the_input_once_per_image_and_processor(session) -> None:
    loader = ImageLoader(ImageSettings(), session)
    uri = img.data_uri(img.encode("PNG", (84, 56)))  # on the grid, sent as it is: named by its bytes' hash
    rule = DetailRule(min_pixels=3136)
    plain = await loader.load([ImageSource(uri)], rule)
    first = await loader.load([ImageSource(uri)], rule, PRE)
    again = await loader.load([ImageSource(uri), ImageSource(uri, "low")], rule, PRE)
    assert plain[0].features is None and first[0].features is not None
    assert again[0].features is first[0].features  # cached with the sized image
    assert first[0].features.key.endswith(hashlib.sha256(base64.b64decode(uri.split(",")[1])).hexdigest())
    assert loader.stats()["result_hits"] == 1
