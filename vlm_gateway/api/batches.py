"""OpenAI's Batch API (see vlm_gateway/batches/).

- ``POST /v1/batches``               BatchCreate → Batch (``validating``); 400 naming a bad input line
- ``GET  /v1/batches``               ``after``, ``limit`` → BatchList, newest first
- ``GET  /v1/batches/{id}``          Batch, with live ``request_counts``
- ``POST /v1/batches/{id}/cancel``   Batch (``cancelling``, or ``cancelled`` when nothing was running)

Every route acts for ``caller(request)`` only: another key's batch is a 404, as an unknown id is.
The input file is uploaded with ``POST /v1/files`` (purpose ``batch``); the results are read with
``GET /v1/files/{output_file_id}/content``.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, post
from litestar.connection import ASGIConnection
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from vlm_gateway.api import ERRORS, caller
from vlm_gateway.batches.service import MAX_LIST, BatchService
from vlm_gateway.schemas.batches import Batch, BatchCreate, BatchList


def batch_service(connection: ASGIConnection[Any, Any, Any, Any]) -> BatchService:
    return connection.app.state.batches


@post("/v1/batches", status_code=200, responses=ERRORS)
async def create_batch(request: Request[Any, Any, Any], data: JSONBody[BatchCreate]) -> Batch:
    return await batch_service(request).create(caller(request), data)


@get("/v1/batches", responses=ERRORS)
async def list_batches(request: Request[Any, Any, Any], after: FromQuery[str | None] = None,
                       limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST)] = 20) -> BatchList:
    return await batch_service(request).page(caller(request), after, limit)


@get("/v1/batches/{batch_id:str}", responses=ERRORS)
async def retrieve_batch(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Batch:
    return await batch_service(request).retrieve(caller(request), batch_id)


@post("/v1/batches/{batch_id:str}/cancel", status_code=200, responses=ERRORS)
async def cancel_batch(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Batch:
    return await batch_service(request).cancel(caller(request), batch_id)


BATCH_ROUTES = [create_batch, list_batches, retrieve_batch, cancel_batch]
