"""OpenAI's Responses API, an adapter over the chat pipeline (see vlm_gateway/responses_api/).

- ``POST   /v1/responses``                 create (``stream``: server-sent events; ``background``: a job)
- ``GET    /v1/responses/{id}``            a stored response (its status, while a background one runs);
                                          ``stream=true``: its events (``starting_after``: those after it)
- ``DELETE /v1/responses/{id}``            {"id", "object": "response", "deleted": true}
- ``POST   /v1/responses/{id}/cancel``     a background response that is queued or running → cancelled
- ``GET    /v1/responses/{id}/input_items`` the items it was given (a cursor page; see responses_api/items.py)

Every route acts for ``caller(request)`` only: another key's response is a 404, as an unknown id is.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, delete, get, post
from litestar.connection import ASGIConnection
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream

from vlm_gateway.api import ERRORS, caller, services, success
from vlm_gateway.paging import Order
from vlm_gateway.responses_api import background, items, replay, run
from vlm_gateway.responses_api.store import ResponseStore
from vlm_gateway.schemas.responses import InputItemList, ResponseDeleted, ResponseObject, ResponsesRequest
from vlm_gateway.streaming import EventStream


def response_store(connection: ASGIConnection[Any, Any, Any, Any]) -> ResponseStore:
    return connection.app.state.responses


@post("/v1/responses", status_code=200, responses={
    **ERRORS, 200: success(ResponseObject, "The response (`background: true`: queued, to be polled); with "
                           "`stream: true`, server-sent events (`response.created` … `response.completed`).")})
async def create_response(request: Request[Any, Any, Any], data: JSONBody[ResponsesRequest]) -> Response[Any] | Stream:
    svc, store, who, req = services(request), response_store(request), caller(request), data
    turn = await run.start(store, req, who)
    if req.background:
        return Response(await background.submit(svc, request.app.state.jobs, store, turn.response, turn.converted,
                                                who))
    if req.stream:
        body, headers = await run.stream(svc, store, turn, who)
        return EventStream(body, headers)
    response, headers = await run.complete(svc, store, turn, who)
    return Response(response, headers=headers)


@get("/v1/responses/{response_id:str}", responses={
    **ERRORS, 200: success(ResponseObject, "The response; with `stream=true`, its server-sent events (those after "
                           "`starting_after`), sent once a background response has finished.")})
async def retrieve_response(request: Request[Any, Any, Any], response_id: FromPath[str],
                            stream: FromQuery[bool] = False,
                            starting_after: FromQuery[int | None] = None) -> Response[Any] | Stream:
    """``stream=true`` is how the SDK reconnects (``responses.stream(response_id=...)``): responses_api/replay.py."""
    store, who = response_store(request), caller(request)
    if stream:
        return EventStream(await replay.replay(store, response_id, who, starting_after), {})
    return Response((await store.get(response_id, who)).response)


@delete("/v1/responses/{response_id:str}", status_code=200, responses=ERRORS)
async def delete_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> ResponseDeleted:
    return await response_store(request).delete(response_id, caller(request))


@post("/v1/responses/{response_id:str}/cancel", status_code=200, responses=ERRORS)
async def cancel_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> ResponseObject:
    return await background.cancel(response_store(request), response_id, caller(request))


@get("/v1/responses/{response_id:str}/input_items", responses=ERRORS)
async def list_input_items(
        request: Request[Any, Any, Any], response_id: FromPath[str], after: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=items.MAX_LIST)] = 20, order: FromQuery[Order] = "desc",
        include: Annotated[list[str] | None, QueryParameter(name="include[]")] = None) -> InputItemList:
    """``include[]`` is how the OpenAI SDK sends a list; ``include`` (repeated) is read too."""
    record = await response_store(request).get(response_id, caller(request))
    image_urls = items.check_include([*(include or []), *request.query_params.getall("include", [])])
    return items.page(items.listed_items(response_id, record.history, image_urls), after=after, limit=limit,
                      order=order)


RESPONSES_ROUTES = [create_response, retrieve_response, delete_response, cancel_response, list_input_items]
