"""Wire formats of OpenAI's Files API (``/v1/files``): data only."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct


class FileObject(Struct, kw_only=True):
    """An uploaded file, as OpenAI's ``FileObject`` (always processed, never expiring)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    expires_at: int | None = None


class FileList(Struct, kw_only=True):
    """``GET /v1/files``: one cursor page (``after=last_id`` for the next while ``has_more``)."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileDeleted(Struct, kw_only=True):
    """``DELETE /v1/files/{file_id}``."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
