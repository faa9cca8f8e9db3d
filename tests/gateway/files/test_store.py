"""The FileStore on both backends: ownership, dedupe by content, freeing on delete, quotas, size and content
checks, cursor pages. Every test runs on the disk and on the real Redis (``make_store``)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time

import pytest

from tests.gateway.files.conftest import ALICE, BOB
from tests.gateway.images import imagedata as img
from tests.helpers import png_bytes
from vlm_gateway.errors import ImageError, InvalidRequest, NotFound, PayloadTooLarge, QuotaExceeded
from vlm_gateway.files import PURPOSES
from vlm_gateway.files.types import FileRecord, new_file_id
from vlm_gateway.limits.rate import ANONYMOUS
from vlm_gateway.schemas.files import FileObject
from vlm_gateway.settings import ImageSettings

PNG = png_bytes(64, 48)


async def test_create_retrieve_open_delete(make_store) -> None:
    store = make_store()
    made = await store.create(ALICE, PNG, "cat.png", "vision")
    assert re.fullmatch(r"file-[A-Za-z0-9_-]{24}", made.id)
    assert made == FileObject(id=made.id, bytes=len(PNG), created_at=made.created_at, filename="cat.png",
                              purpose="vision")
    assert (made.object, made.status, made.expires_at) == ("file", "processed", None)
    assert abs(made.created_at - time.time()) < 5
    assert await store.retrieve(ALICE, made.id) == made
    content = await store.open(ALICE, made.id)
    assert (content.data, content.content_type, content.filename) == (PNG, "image/png", "cat.png")
    deleted = await store.delete(ALICE, made.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (made.id, "file", True)
    with pytest.raises(NotFound) as gone:
        await store.retrieve(ALICE, made.id)
    assert gone.value.status == 404 and gone.value.param == "file_id" and made.id in gone.value.message
    with pytest.raises(NotFound) as named:
        await store.open(ALICE, made.id, param="messages[0].content[1].file.file_id")
    assert named.value.param == "messages[0].content[1].file.file_id"
    with pytest.raises(NotFound):
        await store.delete(ALICE, made.id)


async def test_another_keys_file_does_not_exist(make_store) -> None:
    store = make_store()
    mine = await store.create(ALICE, PNG, "a.png", "vision")
    for call in (store.retrieve(BOB, mine.id), store.open(BOB, mine.id, "p"), store.delete(BOB, mine.id),
                 store.retrieve(ANONYMOUS, mine.id)):
        with pytest.raises(NotFound) as info:
            await call
        assert info.value.message == f"No such File object: {mine.id}"  # as for an id never made
    assert (await store.list(BOB)).data == []
    assert (await store.list(BOB, after=mine.id)).data == []  # as a deleted file's id: a place, no more
    with pytest.raises(NotFound) as cursor:
        await store.list(BOB, after="file-" + "A" * 24)  # an id that is no file's and holds no time
    assert cursor.value.param == "after"
    assert [f.id for f in (await store.list(ALICE)).data] == [mine.id]  # untouched by BOB's delete
    assert (await store.open(ALICE, mine.id)).data == PNG


@pytest.mark.parametrize("file_id", ["../../etc/passwd", "file-short", "file-" + "a" * 23 + "/", "", "x" * 500])
async def test_malformed_ids_are_unknown(make_store, file_id) -> None:
    store = make_store()
    with pytest.raises(NotFound):
        await store.retrieve(ALICE, file_id)


async def test_identical_content_is_stored_once_and_freed_with_its_last_file(make_store) -> None:
    store = make_store()
    other = make_store()  # a second replica on the same directory / Redis prefix
    a1 = await store.create(ALICE, PNG, "one.png", "vision")
    a2 = await store.create(ALICE, PNG, "two.png", "vision")
    b1 = await other.create(BOB, PNG, "bob.png", "user_data")
    assert len({a1.id, a2.id, b1.id}) == 3
    assert await store.backend.used_bytes() == len(PNG)  # one copy
    digest = (await store.open(ALICE, a1.id)).sha256
    await store.delete(ALICE, a1.id)
    await other.delete(BOB, b1.id)
    assert (await store.open(ALICE, a2.id)).data == PNG  # still named by a2
    assert await store.backend.content(digest) == PNG
    await store.delete(ALICE, a2.id)
    assert await store.backend.content(digest) is None  # freed with the last file naming it
    assert await store.backend.used_bytes() == 0


async def test_concurrent_identical_uploads(make_store) -> None:
    store = make_store()
    made = await asyncio.gather(*(store.create(ALICE, PNG, f"{i}.png", "vision") for i in range(6)))
    assert len({m.id for m in made}) == 6 and await store.backend.used_bytes() == len(PNG)
    await asyncio.gather(*(store.delete(ALICE, m.id) for m in made))
    assert await store.backend.used_bytes() == 0 and (await store.list(ALICE)).data == []


async def test_store_quota_counts_content_once(make_store) -> None:
    store = make_store(quota_bytes=250)
    a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
    first = await store.create(ALICE, a, "a", "user_data")
    await store.create(BOB, a, "a", "user_data")  # the same content: no new bytes
    second = await store.create(ALICE, b, "b", "user_data")
    with pytest.raises(QuotaExceeded) as full:
        await store.create(BOB, c, "c", "user_data")
    err = full.value
    assert (err.status, err.code, err.param) == (403, "quota_exceeded", "file")
    assert "full" in err.message and "250" in err.message
    assert [f.id for f in (await store.list(BOB)).data] != [] and await store.backend.used_bytes() == 200
    await store.delete(ALICE, second.id)
    await store.create(BOB, c, "c", "user_data")  # room again
    await store.delete(ALICE, first.id)  # BOB's copy still names `a`: nothing freed
    assert await store.backend.used_bytes() == 200


async def test_key_quota_counts_each_file(make_store) -> None:
    store = make_store(key_quota_bytes=250)
    data = b"x" * 100
    await store.create(ALICE, data, "1", "user_data")
    kept = await store.create(ALICE, data, "2", "user_data")
    with pytest.raises(QuotaExceeded) as full:
        await store.create(ALICE, data, "3", "user_data")
    assert "API key" in full.value.message
    await store.create(BOB, data, "b", "user_data")  # BOB's own allowance
    await store.delete(ALICE, kept.id)
    await store.create(ALICE, data, "3", "user_data")


async def test_work_already_done_is_stored_over_the_quotas_and_counted(make_store) -> None:
    store = make_store(quota_bytes=250, key_quota_bytes=150)
    await store.create(ALICE, b"a" * 100, "a", "user_data")
    now = time.time_ns() // 1000
    done = FileRecord(id=new_file_id(now), owner=ALICE.key_id, sha256=hashlib.sha256(b"r" * 200).hexdigest(),
                      bytes=200, created_us=now, filename="out.jsonl", purpose="batch_output",
                      content_type="application/jsonl")
    with pytest.raises(QuotaExceeded):
        await store.backend.add(done, b"r" * 200)
    await store.backend.add(done, b"r" * 200, quota=False)  # a batch's results: kept
    assert (await store.retrieve(ALICE, done.id)).bytes == 200 and await store.backend.used_bytes() == 300
    with pytest.raises(QuotaExceeded):  # and counted: the next upload waits for room
        await store.create(ALICE, b"b" * 10, "b", "user_data")


async def test_size_limits(make_store) -> None:
    store = make_store(images=ImageSettings(max_image_bytes=len(PNG) - 1), max_bytes=len(PNG) + 10)
    with pytest.raises(PayloadTooLarge) as big:
        await store.create(ALICE, PNG, "cat.png", "vision")  # over the image limit
    assert (big.value.status, big.value.param, big.value.code) == (413, "file", "file_too_large")
    await store.create(ALICE, PNG, "cat.png", "user_data")  # the file limit is larger
    with pytest.raises(PayloadTooLarge):
        await store.create(ALICE, b"x" * (len(PNG) + 11), "big", "user_data")
    with pytest.raises(InvalidRequest) as empty:
        await store.create(ALICE, b"", "empty", "user_data")
    assert empty.value.param == "file" and empty.value.status == 400


@pytest.mark.parametrize("data,code", [
    (b"hello, world", "invalid_image_format"),
    (img.png_header_only(20_000, 20_000), "image_too_large"),  # over images.max_pixels below
    (PNG[: len(PNG) // 2], "invalid_image"),  # truncated
    (img.encode("ICO", (32, 32)), "invalid_image_format"),  # an image, but not an allowed format
])
async def test_vision_files_must_be_images_the_gateway_accepts(make_store, data, code) -> None:
    store = make_store(images=ImageSettings(max_pixels=50_000_000))
    with pytest.raises(ImageError) as info:
        await store.create(ALICE, data, "x", "vision")
    assert (info.value.status, info.value.param, info.value.code) == (400, "file", code)
    assert (await store.list(ALICE)).data == []


async def test_user_data_takes_anything_and_sniffs_its_type(make_store) -> None:
    store = make_store()
    text = await store.create(ALICE, b"hello, world", "notes.txt", "user_data")
    jpeg = await store.create(ALICE, img.encode("JPEG"), "photo.bin", "user_data")
    assert (await store.open(ALICE, text.id)).content_type == "application/octet-stream"
    assert (await store.open(ALICE, jpeg.id)).content_type == "image/jpeg"  # from the bytes, not the name


@pytest.mark.parametrize("purpose", ["fine-tune", "batch_output", "", None])  # batch_output: written, never uploaded
async def test_unknown_purpose(make_store, purpose) -> None:
    with pytest.raises(InvalidRequest) as info:
        await make_store().create(ALICE, PNG, "x.png", purpose)
    assert info.value.param == "purpose" and "'vision', 'user_data'" in info.value.message


async def test_accepted_purposes_are_data(make_store, monkeypatch) -> None:
    from vlm_gateway.files.types import Purpose

    monkeypatch.setitem(PURPOSES, "batch", Purpose(image=False))
    made = await make_store().create(ALICE, b'{"custom_id": "1"}\n', "in.jsonl", "batch")
    assert made.purpose == "batch"


async def test_filenames_keep_their_last_component(make_store) -> None:
    store = make_store()
    assert (await store.create(ALICE, PNG, "../../etc/x.png", "vision")).filename == "x.png"
    assert (await store.create(ALICE, PNG, "C:\\Users\\me\\y.png", "vision")).filename == "y.png"
    assert (await store.create(ALICE, PNG, None, "vision")).filename == "upload"
    assert (await store.create(ALICE, PNG, "line\nbreak\x00.png\r", "vision")).filename == "linebreak.png"
    shown = "rapport\xa0final \U0001f468\u200d\U0001f4bb \u202egnp.png"  # NBSP and a ZWJ emoji stay
    kept = "rapport\xa0final \U0001f468\u200d\U0001f4bb gnp.png"
    assert (await store.create(ALICE, PNG, shown, "vision")).filename == kept


async def test_list_pages_filters_and_orders(make_store) -> None:
    store = make_store()
    made = []
    for i in range(5):
        made.append(await store.create(ALICE, png_bytes(8 + i, 8), f"{i}.png", "vision" if i % 2 else "user_data"))
    ids = [m.id for m in made]
    page = await store.list(ALICE)
    assert [f.id for f in page.data] == ids[::-1]  # newest first
    assert (page.object, page.has_more, page.first_id, page.last_id) == ("list", False, ids[-1], ids[0])
    assert [f.id for f in (await store.list(ALICE, order="asc")).data] == ids
    assert [f.id for f in (await store.list(ALICE, purpose="vision", order="asc")).data] == [ids[1], ids[3]]
    seen, after = [], None
    while True:  # as the SDK pages: after = the last id while has_more
        page = await store.list(ALICE, limit=2, order="asc", after=after)
        seen += [f.id for f in page.data]
        if not page.has_more:
            break
        after = page.last_id
    assert seen == ids
    deleting, after = [], None
    while True:  # the SDK's `for f in client.files.list(limit=2): client.files.delete(f.id)`
        page = await store.list(ALICE, limit=2, order="asc", after=after)
        for f in page.data:
            deleting.append(f.id)
            await store.delete(ALICE, f.id)
        if not page.has_more:
            break
        after = page.last_id  # deleted by now
    assert deleting == ids and (await store.list(ALICE)).data == []
    ids = [(await store.create(ALICE, png_bytes(8 + i, 8), f"{i}.png", "user_data")).id for i in range(5)]
    desc = await store.list(ALICE, limit=2, after=ids[3])
    assert [f.id for f in desc.data] == [ids[2], ids[1]] and desc.has_more
    empty = await store.list(BOB)
    assert (empty.data, empty.has_more, empty.first_id, empty.last_id) == ([], False, None, None)
    for kwargs, param in (({"limit": 0}, "limit"), ({"limit": 10_001}, "limit"), ({"order": "up"}, "order")):
        with pytest.raises(InvalidRequest) as info:
            await store.list(ALICE, **kwargs)
        assert info.value.param == param
