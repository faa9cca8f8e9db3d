"""Smoke test of the loader's public API with data URIs (no network)."""

import base64
import io

import aiohttp
import pytest
from PIL import Image

from gateway.errors import ImageError
from gateway.images.load import DetailRule, ImageLoader, ImageSource, LoadedImage
from gateway.settings import ImageSettings


def _uri(size, fmt="PNG", mime="image/png"):
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, fmt)
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


async def test_data_uris_load_in_order():
    async with aiohttp.ClientSession() as session:
        loader = ImageLoader(ImageSettings(), session)
        out = await loader.load(
            [ImageSource(_uri((1000, 600), "JPEG", "image/jpeg"), "low"), ImageSource(_uri((100, 60)))],
            DetailRule(),
        )
    assert [type(x) for x in out] == [LoadedImage, LoadedImage]
    assert (out[0].width, out[0].height, out[0].format) == (512, 307, "png")
    assert (out[1].width, out[1].height, out[1].format) == (100, 60, "png")


async def test_bad_data_uri_names_param():
    async with aiohttp.ClientSession() as session:
        loader = ImageLoader(ImageSettings(), session)
        with pytest.raises(ImageError) as info:
            await loader.load([ImageSource("data:image/png;base64,AAAA", param="messages[0].content[1].image_url")],
                              DetailRule())
    assert info.value.param == "messages[0].content[1].image_url"
