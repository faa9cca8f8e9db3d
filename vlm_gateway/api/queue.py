"""fal-style async jobs: submit, poll, fetch, cancel. The job kinds are not known here: the body is
classified by ``JobServices.classify`` and run by the worker's runner.

- ``POST /queue/{model}``               any chat / completions / seed-shaped body; webhook by
                                        ``?fal_webhook=URL`` (fal's name), ``?webhook=URL`` or a
                                        ``callback_url`` field → request id + URLs
- ``GET  /queue/requests/{id}/status``  ``IN_QUEUE`` (with ``queue_position``) / ``IN_PROGRESS`` / ``COMPLETED``
- ``GET  /queue/requests/{id}``         the stored result (200), the stored error, or 202 with the status
- ``PUT  /queue/requests/{id}/cancel``  202 ``CANCELLATION_REQUESTED`` (queued: it never runs; running: it
                                        is stopped at its worker's next heartbeat, unless it finishes
                                        first), or 400 ``ALREADY_COMPLETED``

The same three under the model, as fal's clients build them (``/queue/{model}/requests/{id}/status``…).
A key sees and cancels only its own jobs (another key's id is a 404, as an unknown one).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody

from vlm_gateway.api import ERRORS, caller, services, success
from vlm_gateway.errors import InvalidRequest, NotFound
from vlm_gateway.jobs import JobServices
from vlm_gateway.jobs.types import JobView, stored_error
from vlm_gateway.pipeline import admit_submission
from vlm_gateway.schemas.jobs import QueueCancelled, QueueStatus, QueueSubmitted

_STATUS = {"queued": "IN_QUEUE", "running": "IN_PROGRESS", "done": "COMPLETED"}


def job_services(request: Request[Any, Any, Any]) -> JobServices:
    return request.app.state.jobs


def _urls(request: Request[Any, Any, Any], job_id: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/queue/requests/{job_id}"


def _status(request: Request[Any, Any, Any], view: JobView) -> QueueStatus:
    base = _urls(request, view.id)
    out = QueueStatus(_STATUS[view.state], response_url=base, status_url=f"{base}/status")  # type: ignore[arg-type]
    if view.position is not None:
        out.queue_position = view.position
    if view.error is not None:
        out.error = view.error
    return out


@post("/queue/{model:path}", status_code=200, responses=ERRORS)
async def queue_submit(request: Request[Any, Any, Any], model: FromPath[str], data: JSONBody[dict[str, Any]],
                       webhook: FromQuery[str | None] = None,
                       fal_webhook: FromQuery[str | None] = None) -> Response[QueueSubmitted]:
    """Any body the model's routes take (chat, completions, a seed's), run as a job."""
    jobs = job_services(request)
    body = data
    model = model.strip("/")
    if not model:
        raise InvalidRequest("the URL must name a model: /queue/{model}", param="model")
    given = [(name, url) for name, url in (("fal_webhook", fal_webhook), ("webhook", webhook)) if url is not None]
    if len(given) > 1:
        raise InvalidRequest("give one of fal_webhook and webhook", param="webhook")
    hook_param, hook = given[0] if given else ("callback_url", body.get("callback_url"))
    if hook is not None and not isinstance(hook, str):
        raise InvalidRequest("callback_url must be a URL", param="callback_url", code="invalid_url")
    who = caller(request)
    job = await jobs.queue.new_job(jobs.classify(model, body), model, msgspec.json.encode(body), webhook=hook,
                                   caller=who, webhook_param=hook_param)
    headers = await admit_submission(services(request), who, model)  # 404 / 429 now; slots when it runs
    await jobs.queue.enqueue(job)
    base = _urls(request, job.id)
    return Response(QueueSubmitted(job.id, f"{base}/status", base, f"{base}/cancel"), headers=headers)


@get("/queue/requests/{request_id:str}/status", responses=ERRORS)
async def queue_status(request: Request[Any, Any, Any], request_id: FromPath[str]) -> QueueStatus:
    return _status(request, await job_services(request).queue.status(request_id, caller(request).key_id))


@get("/queue/requests/{request_id:str}", status_code=200, responses={
    **ERRORS, 202: success(QueueStatus, "Not done yet: the status.")})
async def queue_result(request: Request[Any, Any, Any], request_id: FromPath[str]) -> Response[Any]:
    view = await job_services(request).queue.result(request_id, caller(request).key_id)
    if view.result is None:
        return Response(_status(request, view), status_code=202)
    if not view.result.ok:
        raise stored_error(view.result)
    return Response(view.result.body, media_type=MediaType.JSON)


@put("/queue/requests/{request_id:str}/cancel", status_code=202, responses={
    **ERRORS, 400: success(QueueCancelled, "`ALREADY_COMPLETED`: the job has its result.")})
async def queue_cancel(request: Request[Any, Any, Any], request_id: FromPath[str]) -> Response[QueueCancelled]:
    if await job_services(request).queue.cancel(request_id, caller(request).key_id) == "finished":
        return Response(QueueCancelled("ALREADY_COMPLETED"), status_code=400)
    return Response(QueueCancelled("CANCELLATION_REQUESTED"), status_code=202)


_UNDER_MODEL = re.compile(r"(?P<model>.+)/requests/(?P<id>[^/]+)(?P<what>/status|/cancel)?/?")


def _under_model(path: str, what: str) -> str:
    """The request id of ``{model}/requests/{id}{what}`` (fal's own URLs, the model ignored), else 404."""
    match = _UNDER_MODEL.fullmatch(path.strip("/"))
    if match is None or (match["what"] or "") != what:
        raise NotFound(f"no route /queue/{path.strip('/')}")
    return match["id"]


# (the path parameter is named as POST /queue/{model}'s: OpenAPI allows one template per path)
@get("/queue/{model:path}", status_code=200, responses={
    **ERRORS, 202: success(QueueStatus, "Not done yet: the status.")})
async def queue_get_under_model(request: Request[Any, Any, Any], model: FromPath[str]) -> Response[Any]:
    """``/queue/{model}/requests/{id}/status`` and ``/queue/{model}/requests/{id}``, as fal's clients
    build them (``model`` here is all of the path after ``/queue/``): the routes without the model."""
    if model.rstrip("/").endswith("/status"):
        return Response(await queue_status.fn(request, _under_model(model, "/status")))
    return await queue_result.fn(request, _under_model(model, ""))


@put("/queue/{model:path}", status_code=202, responses={
    **ERRORS, 400: success(QueueCancelled, "`ALREADY_COMPLETED`: the job has its result.")})
async def queue_cancel_under_model(request: Request[Any, Any, Any], model: FromPath[str]) -> Response[QueueCancelled]:
    """``/queue/{model}/requests/{id}/cancel``, as fal's clients build it."""
    return await queue_cancel.fn(request, _under_model(model, "/cancel"))


QUEUE_ROUTES = [queue_submit, queue_status, queue_result, queue_cancel, queue_get_under_model,
                queue_cancel_under_model]
