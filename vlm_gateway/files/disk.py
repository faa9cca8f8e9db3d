"""``DiskFiles``: the file backend of one gateway process, in a directory.

Layout under ``root``::

    blobs/ab/ab12…ef      content, named by its SHA-256 (identical uploads are stored once)
    meta/file-….json      one record per file (msgspec JSON)

Writes go to a temporary file and are renamed into place (a crash leaves no half file); content is written
before its record, and removed after the last record naming it. The index (records, reference counts,
bytes used) is read from ``meta/`` on first use and kept in memory: one process owns the directory
(several replicas share files through Redis instead). Content that no record names (left by a crash) and
stray temporary files are removed when the index is read. Nothing is created before the first upload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

import msgspec

from vlm_gateway.files.types import FileRecord, over_quota

log = logging.getLogger("vlm_gateway.files")

_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder(FileRecord)


class _Index(msgspec.Struct):
    records: dict[str, FileRecord]
    refs: Counter[str]
    used: int
    owner_used: Counter[str]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DiskFiles:
    """Files in ``root`` (see the module docstring); quotas of 0 mean none."""

    def __init__(self, root: Path, quota_bytes: int = 0, key_quota_bytes: int = 0) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self.key_quota_bytes = key_quota_bytes
        self._lock = asyncio.Lock()  # changes, one at a time
        self._loading = asyncio.Lock()  # the index is read once, before any change
        self._index: _Index | None = None

    def _blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def _meta(self, file_id: str) -> Path:
        return self.root / "meta" / f"{file_id}.json"

    async def _loaded(self) -> _Index:
        if self._index is None:
            async with self._loading:
                if self._index is None:
                    self._index = await asyncio.to_thread(self._load)
        return self._index

    def _load(self) -> _Index:
        records: dict[str, FileRecord] = {}
        for path in sorted((self.root / "meta").glob("*")):
            if path.name.startswith("."):
                path.unlink(missing_ok=True)  # a temporary file a crash left behind
                continue
            try:
                record = _DECODE.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError) as exc:
                log.warning("ignoring unreadable file record %s: %s", path, exc)
                continue
            records[record.id] = record
        refs = Counter(r.sha256 for r in records.values())
        sizes = {r.sha256: r.bytes for r in records.values()}
        owner_used: Counter[str] = Counter()
        for record in records.values():
            owner_used[record.owner] += record.bytes
        for path in (self.root / "blobs").glob("*/*"):
            if path.name not in refs:  # content of an upload that crashed, or a temporary file
                path.unlink(missing_ok=True)
        return _Index(records, refs, sum(sizes.values()), owner_used)

    async def add(self, record: FileRecord, data: bytes, *, quota: bool = True) -> None:
        async with self._lock:
            index = await self._loaded()
            size = record.bytes
            if quota and self.key_quota_bytes and index.owner_used[record.owner] + size > self.key_quota_bytes:
                raise over_quota("this API key's file storage", index.owner_used[record.owner], size,
                                 self.key_quota_bytes)
            fresh = index.refs[record.sha256] == 0
            if quota and fresh and self.quota_bytes and index.used + size > self.quota_bytes:
                raise over_quota("the gateway's file storage", index.used, size, self.quota_bytes)
            if fresh:
                await asyncio.to_thread(_write, self._blob(record.sha256), data)
            await asyncio.to_thread(_write, self._meta(record.id), _ENCODE.encode(record))
            index.records[record.id] = record
            index.refs[record.sha256] += 1
            index.owner_used[record.owner] += size
            if fresh:
                index.used += size

    async def get(self, file_id: str) -> FileRecord | None:
        return (await self._loaded()).records.get(file_id)

    async def records(self, owner: str) -> list[FileRecord]:
        index = await self._loaded()
        return sorted((r for r in index.records.values() if r.owner == owner), key=lambda r: r.order)

    async def content(self, sha256: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._blob(sha256).read_bytes)
        except FileNotFoundError:
            return None

    async def remove(self, record: FileRecord) -> bool:
        async with self._lock:
            index = await self._loaded()
            if index.records.pop(record.id, None) is None:
                return False
            await asyncio.to_thread(self._meta(record.id).unlink, True)
            index.owner_used[record.owner] -= record.bytes
            if index.owner_used[record.owner] <= 0:
                del index.owner_used[record.owner]
            index.refs[record.sha256] -= 1
            if index.refs[record.sha256] <= 0:
                del index.refs[record.sha256]
                index.used -= record.bytes
                await asyncio.to_thread(self._blob(record.sha256).unlink, True)
            return True

    async def used_bytes(self) -> int:
        return (await self._loaded()).used

    async def close(self) -> None:
        self._index = None  # read again from the directory on next use
