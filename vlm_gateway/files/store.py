"""``FileStore``: OpenAI's Files API over a backend (disk or Redis), with ownership and upload checks.

Every call takes the ``Caller``: a file belongs to the key that uploaded it, and to every other key it does
not exist (404, the same answer as for an id never made). Uploads are checked for purpose, size and (for
purpose ``vision``) content: only images the image loader would accept are stored.

The pipeline turns a file id into an image with one call and loads it with the others::

    source = await store.image_source(caller, file_id, detail="auto", param="messages[0].content[1]")
    loaded = await images.load([source, ...], rule)
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import unicodedata
from typing import Any, Literal

from vlm_gateway.errors import ImageError, InvalidRequest, NotFound, PayloadTooLarge
from vlm_gateway.files.settings import FileSettings
from vlm_gateway.files.types import (
    PURPOSES,
    FileBackend,
    FileContent,
    FileRecord,
    created_of,
    is_file_id,
    new_file_id,
)
from vlm_gateway.images.decode import identify
from vlm_gateway.images.load import ImageSource
from vlm_gateway.limits.rate import Caller
from vlm_gateway.paging import check_page
from vlm_gateway.schemas.files import FileDeleted, FileList, FileObject
from vlm_gateway.settings import ImageSettings, Settings, SettingsError

OCTET_STREAM = "application/octet-stream"
MAX_FILENAME = 255
_UNSHOWN = ("Cc", "Zl", "Zp")  # control characters, line and paragraph separators
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")  # embeddings, overrides, isolates
MAX_LIST = 10_000


def file_object(record: FileRecord) -> FileObject:
    return FileObject(id=record.id, bytes=record.bytes, created_at=record.created_us // 1_000_000,
                      filename=record.filename, purpose=record.purpose)


def _filename(name: str | None) -> str:
    """The last path component (the SDK sends a base name; other clients may not), without control
    characters, line separators and bidirectional overrides (a newline would split a header or a log
    line that shows it), at most 255 chars."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c) not in _UNSHOWN and c not in _BIDI).strip()
    return base[:MAX_FILENAME] or "upload"


class FileStore:
    """One per app (``app.state.files``), over ``backend``; ``images`` bounds what purpose ``vision`` takes."""

    def __init__(self, backend: FileBackend, settings: FileSettings, images: ImageSettings) -> None:
        self.backend = backend
        self.settings = settings
        self.images = images

    async def close(self) -> None:
        await self.backend.close()

    def size_limit(self, purpose: str) -> int:
        """The most bytes one file of ``purpose`` may have."""
        rule = PURPOSES.get(purpose)
        if rule is not None and rule.image:
            return min(self.settings.max_bytes, self.images.max_image_bytes)
        return self.settings.max_bytes

    @staticmethod
    def check_purpose(purpose: str | None) -> str:
        if purpose not in PURPOSES:
            accepted = ", ".join(repr(p) for p in PURPOSES)
            said = "a purpose is required" if purpose is None else f"{purpose!r} is not a supported purpose"
            raise InvalidRequest(f"{said}: use one of {accepted}", param="purpose", code="invalid_value")
        return purpose

    def check_size(self, size: int, purpose: str) -> None:
        """``PayloadTooLarge`` (param ``file``) for a file over its purpose's limit; 400 for an empty one."""
        limit = self.size_limit(purpose)
        if size > limit:
            raise PayloadTooLarge(f"the file is too large ({size} bytes; the limit for purpose {purpose!r} is "
                                  f"{limit} bytes)", param="file", code="file_too_large")
        if size == 0:
            raise InvalidRequest("the file is empty", param="file", code="invalid_value")

    async def _content_type(self, data: bytes, purpose: str) -> str:
        try:
            info = await asyncio.to_thread(identify, data, self.images.max_pixels)
        except ImageError as exc:
            if PURPOSES[purpose].image:
                raise ImageError(f"the file is not an image the gateway accepts: {exc.message}", param="file",
                                 code=exc.code) from None
            return OCTET_STREAM
        return info.content_type

    async def create(self, caller: Caller, data: bytes, filename: str | None, purpose: str | None) -> FileObject:
        """Store an upload of ``caller``'s after every check (purpose, size, content, quota)."""
        purpose = self.check_purpose(purpose)
        self.check_size(len(data), purpose)
        content_type = await self._content_type(data, purpose)
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        created = time.time_ns() // 1000
        record = FileRecord(id=new_file_id(created), owner=caller.key_id, sha256=digest, bytes=len(data),
                            created_us=created, filename=_filename(filename), purpose=purpose,
                            content_type=content_type)
        await self.backend.add(record, data)
        return file_object(record)

    async def record(self, caller: Caller, file_id: str, param: str | None = "file_id") -> FileRecord:
        """``caller``'s file ``file_id``, else ``NotFound`` naming ``param`` (foreign ids as unknown ones)."""
        record = await self.backend.get(file_id) if is_file_id(file_id) else None
        if record is None or record.owner != caller.key_id:
            raise NotFound(f"No such File object: {file_id[:64]}", param=param)
        return record

    async def retrieve(self, caller: Caller, file_id: str) -> FileObject:
        return file_object(await self.record(caller, file_id))

    async def open(self, caller: Caller, file_id: str, param: str | None = "file_id") -> FileContent:
        """The bytes of ``caller``'s file ``file_id`` (``NotFound`` naming ``param`` when there is none)."""
        record = await self.record(caller, file_id, param)
        data = await self.backend.content(record.sha256)
        if data is None:  # deleted since the record was read
            raise NotFound(f"No such File object: {file_id[:64]}", param=param)
        return FileContent(data, record.content_type, record.sha256, record.filename)

    async def image_source(self, caller: Caller, file_id: str, *, detail: Literal["auto", "low", "high"] = "auto",
                           param: str = "image") -> ImageSource:
        """An ``ImageSource`` for ``ImageLoader.load`` carrying the file's bytes (checked and sized there like
        any image, errors naming ``param``); ``NotFound`` naming ``param`` for an unknown or foreign id."""
        content = await self.open(caller, file_id, param)
        return ImageSource(file_id, detail, param, data=content.data)

    async def delete(self, caller: Caller, file_id: str) -> FileDeleted:
        record = await self.record(caller, file_id)
        if not await self.backend.remove(record):
            raise NotFound(f"No such File object: {file_id[:64]}", param="file_id")
        return FileDeleted(id=record.id)

    async def _place(self, caller: Caller, after: str) -> tuple[int, str]:
        """Where a page starts: after ``caller``'s file ``after``, or where it was once it is deleted."""
        try:
            return (await self.record(caller, after, "after")).order
        except NotFound:
            created = created_of(after)
            if created is None:
                raise
            return created, after

    async def list(self, caller: Caller, *, purpose: str | None = None, limit: int = MAX_LIST,
                   order: str = "desc", after: str | None = None) -> FileList:
        """OpenAI's cursor page: ``caller``'s files (of ``purpose``), newest first unless ``order="asc"``,
        starting after the file ``after``."""
        check_page(limit, MAX_LIST, order)
        records = [r for r in await self.backend.records(caller.key_id) if purpose is None or r.purpose == purpose]
        if order == "desc":
            records.reverse()
        if after is not None:
            key = await self._place(caller, after)
            records = [r for r in records if (r.order > key if order == "asc" else r.order < key)]
        page = records[:limit]
        return FileList(data=[file_object(r) for r in page], has_more=len(records) > limit,
                        first_id=page[0].id if page else None, last_id=page[-1].id if page else None)


def build_file_store(settings: Settings, redis: Any = None) -> FileStore:
    """The app's store: Redis when ``files.backend`` is ``redis`` or ``auto`` with a client, else disk."""
    files = settings.files
    check_backend(settings)
    if redis is not None and files.backend in ("auto", "redis"):
        from vlm_gateway.files.redis import RedisFiles

        backend: FileBackend = RedisFiles(redis, files.key_prefix, files.quota_bytes, files.key_quota_bytes)
    else:
        from vlm_gateway.files.disk import DiskFiles

        backend = DiskFiles(files.path, files.quota_bytes, files.key_quota_bytes)
    return FileStore(backend, files, settings.images)


def check_backend(settings: Settings) -> None:
    """``SettingsError`` when ``files.backend = "redis"`` has no ``redis_url`` to use."""
    if settings.files.backend == "redis" and not settings.redis_url:
        raise SettingsError('invalid configuration: files.backend is "redis" but redis_url is empty. Fix: set '
                            'redis_url, or files.backend = "auto" or "disk"')
