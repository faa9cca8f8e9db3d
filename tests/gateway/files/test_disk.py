"""The disk backend's own promises: its index is rebuilt from the directory, and what a crash left is
cleaned up; nothing is created before the first upload."""

from __future__ import annotations

import asyncio

from tests.gateway.files.conftest import ALICE
from tests.helpers import png_bytes
from vlm_gateway.files import DiskFiles, FileSettings, FileStore
from vlm_gateway.settings import ImageSettings

PNG = png_bytes()


def _store(root, **quota) -> FileStore:
    return FileStore(DiskFiles(root, **quota), FileSettings(dir=str(root)), ImageSettings())


async def test_index_is_rebuilt_from_the_directory(tmp_path) -> None:
    root = tmp_path / "files"
    first = _store(root, quota_bytes=len(PNG) + 10)
    assert (await first.list(ALICE)).data == [] and not root.exists()  # nothing created by reading
    made = await first.create(ALICE, PNG, "a.png", "vision")
    twin = await first.create(ALICE, PNG, "b.png", "vision")
    await first.close()
    (root / "blobs" / "ab").mkdir(exist_ok=True)
    (root / "blobs" / "ab" / ("ab" * 32)).write_bytes(b"orphan")  # content whose record never got written
    (root / "meta" / ".x.tmp").write_bytes(b"half")
    second = _store(root, quota_bytes=len(PNG) + 10)
    assert [f.id for f in (await second.list(ALICE, order="asc")).data] == [made.id, twin.id]
    assert await second.backend.used_bytes() == len(PNG)
    assert not (root / "blobs" / "ab" / ("ab" * 32)).exists() and not (root / "meta" / ".x.tmp").exists()
    await second.delete(ALICE, made.id)
    assert (await second.open(ALICE, twin.id)).data == PNG  # the references were counted again
    await second.delete(ALICE, twin.id)
    assert list((root / "blobs").glob("*/*")) == [] and list((root / "meta").iterdir()) == []


async def test_unreadable_record_is_skipped(tmp_path) -> None:
    root = tmp_path / "files"
    store = _store(root)
    made = await store.create(ALICE, PNG, "a.png", "vision")
    (root / "meta" / "file-broken.json").write_bytes(b"{not json")
    fresh = _store(root)
    assert [f.id for f in (await fresh.list(ALICE)).data] == [made.id]


async def test_first_use_reads_the_index_once(tmp_path) -> None:
    root = tmp_path / "files"
    old = await _store(root).create(ALICE, PNG, "old.png", "vision")
    fresh = _store(root)  # index not read yet: these race to read it
    _, new, _ = await asyncio.gather(fresh.list(ALICE), fresh.create(ALICE, PNG, "new.png", "vision"),
                                     fresh.retrieve(ALICE, old.id))
    assert await fresh.backend.used_bytes() == len(PNG)
    for file_id in (old.id, new.id):
        await fresh.delete(ALICE, file_id)
    assert list((root / "blobs").glob("*/*")) == [] and await fresh.backend.used_bytes() == 0
