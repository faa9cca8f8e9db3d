"""OpenAI's Files API, for images the gateway's requests can refer to by ``file_id``.

- ``POST   /v1/files``                    multipart/form-data: ``file`` and ``purpose`` → FileObject
- ``GET    /v1/files``                    ``purpose``, ``limit``, ``order``, ``after`` → list
- ``GET    /v1/files/{file_id}``          FileObject
- ``GET    /v1/files/{file_id}/content``  the bytes, with their sniffed content type
- ``DELETE /v1/files/{file_id}``          {"id", "object": "file", "deleted": true}

Every route acts for ``caller(request)`` only: another key's file is a 404, as an unknown id is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from litestar import Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import UploadFile
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, FromQuery, QueryParameter

from vlm_gateway.api import ERRORS, caller
from vlm_gateway.errors import InvalidRequest, PayloadTooLarge
from vlm_gateway.files.store import MAX_LIST, FileStore, check_backend
from vlm_gateway.files.types import PURPOSES
from vlm_gateway.paging import Order
from vlm_gateway.schemas.files import FileDeleted, FileList, FileObject
from vlm_gateway.settings import Settings

MULTIPART_SLACK = 64 * 1024  # the body may exceed the file by its part headers and the purpose field


def file_store(connection: ASGIConnection[Any, Any, Any, Any]) -> FileStore:
    return connection.app.state.files


def _size(upload: UploadFile) -> int:
    upload.file.seek(0, os.SEEK_END)
    size = upload.file.tell()
    upload.file.seek(0)
    return size


async def _read_upload(request: Request[Any, Any, Any], store: FileStore) -> tuple[bytes, str | None, str]:
    """The ``file`` part's bytes and name and the ``purpose``, checked before the file is read into memory."""
    try:
        form = await request.form()
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"the file is too large (the limit is {store.settings.max_bytes} bytes)",
                              param="file", code="file_too_large") from None
    try:
        purpose = form.get("purpose")
        purpose = store.check_purpose(purpose if isinstance(purpose, str) else None)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("send the file as multipart/form-data with a `file` part (a file, with a filename) "
                                 "and a `purpose` field", param="file", code="invalid_value")
        store.check_size(_size(upload), purpose)
        return await upload.read(), upload.filename, purpose
    finally:
        for value in form.values():
            if isinstance(value, UploadFile):
                await value.close()


@dataclass
class _UploadOperation(Operation):
    """The upload's multipart body in the OpenAPI document (the form is read by ``_read_upload``, which
    checks purpose and size before the file is in memory, so it is no typed ``data`` parameter)."""

    def __post_init__(self) -> None:
        form = Schema(type=OpenAPIType.OBJECT, required=["file", "purpose"], properties={
            "file": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description="The file."),
            "purpose": Schema(type=OpenAPIType.STRING, enum=sorted(PURPOSES),
                              description="`vision` and `user_data`: images for `file_id`; `batch`: JSONL."),
        })
        self.request_body = RequestBody(content={"multipart/form-data": OpenAPIMediaType(schema=form)}, required=True)


async def _upload(request: Request[Any, Any, Any]) -> FileObject:
    store = file_store(request)
    data, filename, purpose = await _read_upload(request, store)
    return await store.create(caller(request), data, filename, purpose)


@get("/v1/files", responses=ERRORS)
async def list_files(request: Request[Any, Any, Any], purpose: FromQuery[str | None] = None,
                     limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST)] = MAX_LIST,
                     order: FromQuery[Order] = "desc",
                     after: FromQuery[str | None] = None) -> FileList:
    return await file_store(request).list(caller(request), purpose=purpose, limit=limit, order=order, after=after)


@get("/v1/files/{file_id:str}", responses=ERRORS)
async def retrieve_file(request: Request[Any, Any, Any], file_id: FromPath[str]) -> FileObject:
    return await file_store(request).retrieve(caller(request), file_id)


@get("/v1/files/{file_id:str}/content", responses=ERRORS)
async def file_content(request: Request[Any, Any, Any], file_id: FromPath[str]) -> Response[bytes]:
    content = await file_store(request).open(caller(request), file_id)
    disposition = f"attachment; filename*=UTF-8''{quote(content.filename, safe='')}"
    return Response(content.data, media_type=content.content_type, headers={"Content-Disposition": disposition})


@delete("/v1/files/{file_id:str}", status_code=200, responses=ERRORS)
async def delete_file(request: Request[Any, Any, Any], file_id: FromPath[str]) -> FileDeleted:
    return await file_store(request).delete(caller(request), file_id)


def file_routes(settings: Settings) -> list[HTTPRouteHandler]:
    """The routes, the upload's body limit set by ``files.max_bytes`` (checked while the body is read).
    Raises ``SettingsError`` for a ``[files]`` section that cannot work with the rest (see ``check_backend``)."""
    check_backend(settings)
    upload = post("/v1/files", status_code=200, responses=ERRORS, operation_class=_UploadOperation,
                  request_max_body_size=settings.files.max_bytes + MULTIPART_SLACK)(_upload)
    return [upload, list_files, retrieve_file, file_content, delete_file]
