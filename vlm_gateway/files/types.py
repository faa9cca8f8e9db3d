"""What the file store keeps: a record per file id, content by SHA-256, and the backend protocol.

A backend keeps three things consistent, atomically with respect to every other caller:

* records by file id (``FileRecord``, owner included) and each owner's list of ids;
* content by hash, stored once however many records name it, with a count of those records: removing
  the last record that names a hash frees its content;
* the bytes used: all content (each hash once) against ``quota_bytes``, each owner's files (each file
  counted) against ``key_quota_bytes``. ``add`` refuses with ``QuotaExceeded`` (nothing stored).
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import Protocol

import msgspec

from vlm_gateway.errors import QuotaExceeded


class Purpose(msgspec.Struct, frozen=True):
    """What an accepted ``purpose`` asks of a file's content."""

    image: bool  # only images the gateway would accept (format allow-list, pixel and byte limits)


#: The accepted ``purpose`` values (OpenAI's names). Add an entry to accept another. A ``batch`` file's
#: lines are checked when a batch is created from it (vlm_gateway/batches/lines.py); the gateway writes
#: batch results as purpose ``batch_output``, which is not accepted for upload.
PURPOSES: dict[str, Purpose] = {"vision": Purpose(image=True), "user_data": Purpose(image=False),
                                "batch": Purpose(image=False)}

_ID = re.compile(r"file-[A-Za-z0-9_-]{24}")


def new_file_id(created_us: int) -> str:
    """``file-`` and 24 URL-safe characters, as OpenAI's ids look: the file's creation time (µs) and 80
    random bits. The time is there so that a deleted file's id still marks a place in a listing (the
    ``after`` of a client that deletes the files it pages through)."""
    return "file-" + base64.urlsafe_b64encode(created_us.to_bytes(8, "big") + secrets.token_bytes(10)).decode()


def created_of(file_id: str) -> int | None:
    """The creation time (µs) ``new_file_id`` put in ``file_id``; None for an id that holds none."""
    if not is_file_id(file_id):
        return None
    created = int.from_bytes(base64.urlsafe_b64decode(file_id[5:])[:8], "big")
    return created if _EPOCH_US <= created < _EPOCH_US * 3 else None


_EPOCH_US = 1_577_836_800_000_000  # 2020-01-01: earlier "times" are the random ids of older versions


def is_file_id(text: str) -> bool:
    """Whether ``text`` could be an id this store made (anything else is never looked up)."""
    return _ID.fullmatch(text) is not None


class FileRecord(msgspec.Struct, frozen=True):
    """One uploaded file as stored: OpenAI's FileObject fields plus owner, hash and content type."""

    id: str
    owner: str  # the uploading Caller's key_id
    sha256: str  # hex digest of the content: where the bytes are
    bytes: int
    created_us: int  # µs since the epoch: creation order (FileObject.created_at is its seconds)
    filename: str
    purpose: str
    content_type: str  # sniffed from the bytes at upload ("application/octet-stream" when not an image)

    @property
    def order(self) -> tuple[int, str]:
        return self.created_us, self.id


class FileContent(msgspec.Struct, frozen=True):
    """A file's bytes as ``FileStore.open`` hands them on."""

    data: bytes
    content_type: str
    sha256: str
    filename: str


def over_quota(what: str, used: int, size: int, quota: int) -> QuotaExceeded:
    return QuotaExceeded(f"{what} is full: {used} of {quota} bytes are used, and this file needs {size} more. "
                         "Delete files to make room.", param="file")


class FileBackend(Protocol):
    """Records and content (see the module docstring); the same contract on disk and in Redis."""

    async def add(self, record: FileRecord, data: bytes, *, quota: bool = True) -> None:
        """Store ``record`` and (unless its hash is stored already) ``data``; ``QuotaExceeded`` when over
        a quota. ``quota=False``: stored even over them (work already done, such as a batch's output),
        and counted, so that later uploads wait for room."""
        ...

    async def get(self, file_id: str) -> FileRecord | None: ...

    async def records(self, owner: str) -> list[FileRecord]:
        """Every record of ``owner``, in creation order."""
        ...

    async def content(self, sha256: str) -> bytes | None: ...

    async def remove(self, record: FileRecord) -> bool:
        """Remove the record (and its content if no other record names it); False if it was gone already."""
        ...

    async def used_bytes(self) -> int:
        """Content bytes stored (each hash once)."""
        ...

    async def close(self) -> None: ...
