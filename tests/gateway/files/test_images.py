"""A file's content through the image loader: the same checks, sizing and result cache as a data URI."""

from __future__ import annotations

import pytest

from tests.gateway.files.conftest import ALICE, BOB
from tests.gateway.images import imagedata as img
from vlm_gateway.errors import ImageError, NotFound
from vlm_gateway.images.load import DetailRule, ImageLoader, ImageSource
from vlm_gateway.settings import ImageSettings

BIG = img.encode("JPEG", (1000, 600))


async def test_file_loads_as_an_image_sized_by_detail(make_store, session) -> None:
    store = make_store()
    loader = ImageLoader(ImageSettings(), session)
    made = await store.create(ALICE, BIG, "big.jpg", "vision")
    low = await store.image_source(ALICE, made.id, detail="low", param="messages[0].content[0]")
    assert low == ImageSource(made.id, "low", "messages[0].content[0]", data=BIG)
    high = await store.image_source(ALICE, made.id)
    out = await loader.load([low, high], DetailRule())
    assert [(o.width, o.height, o.format) for o in out] == [(512, 307, "png"), (1000, 600, "jpeg")]
    assert out[1].url == img.data_uri(BIG, "image/jpeg")  # unchanged bytes, as a data URI would be


async def test_result_cache_is_by_content(make_store, session) -> None:
    store = make_store()
    loader = ImageLoader(ImageSettings(), session)
    made = await store.create(ALICE, BIG, "big.jpg", "vision")
    (first,) = await loader.load([ImageSource(img.data_uri(BIG, "image/jpeg"), "low")], DetailRule())
    hits = loader.stats().get("result_hits", 0)
    (again,) = await loader.load([await store.image_source(ALICE, made.id, detail="low")], DetailRule())
    assert again == first and loader.stats()["result_hits"] == hits + 1  # the data URI's result, by hash


async def test_unknown_or_foreign_file_is_a_404_naming_the_part(make_store) -> None:
    store = make_store()
    made = await store.create(ALICE, BIG, "big.jpg", "vision")
    for who, file_id in ((BOB, made.id), (ALICE, "file-" + "x" * 24)):
        with pytest.raises(NotFound) as info:
            await store.image_source(who, file_id, param="messages[0].content[2]")
        assert info.value.param == "messages[0].content[2]" and info.value.status == 404


async def test_non_image_file_fails_in_the_loader_naming_the_part(make_store, session) -> None:
    store = make_store()
    made = await store.create(ALICE, b"not an image", "a.txt", "user_data")
    source = await store.image_source(ALICE, made.id, param="messages[1].content[0]")
    with pytest.raises(ImageError) as info:
        await ImageLoader(ImageSettings(), session).load([source], DetailRule())
    assert (info.value.param, info.value.code) == ("messages[1].content[0]", "invalid_image_format")


async def test_loader_holds_bytes_to_the_image_byte_limit(session) -> None:
    loader = ImageLoader(ImageSettings(max_image_bytes=len(BIG) - 1), session)
    with pytest.raises(ImageError) as info:
        await loader.load([ImageSource("file-x", param="p", data=BIG)], DetailRule())
    assert (info.value.param, info.value.code) == ("p", "image_too_large")
