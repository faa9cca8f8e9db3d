"""The seed services' own routes, as thin adapters onto the chat pipeline.

- FastVLM   POST /vision                       (errors as {"error", "status_code", "timestamp"})
- fal LLaVA POST /run/{model}
- vlm.run   POST /v1/image/generate, GET /v1/image/generate/{id} (also /v1/predictions/{id}, where the
            vlmrun SDK polls)   (batch: true runs as a job)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.params import FromPath, JSONBody

from vlm_gateway import seeds
from vlm_gateway.api import ERRORS, SEED_ERRORS, caller, services, success
from vlm_gateway.complete import complete_chat
from vlm_gateway.jobs.queue import not_found
from vlm_gateway.pipeline import admit_submission
from vlm_gateway.schemas.seeds import (
    FalRequest,
    FalResponse,
    VisionCompletion,
    VisionRequest,
    VlmRunRequest,
    VlmRunResponse,
)


@post("/vision", status_code=200, opt={"error_shape": "seed"}, responses=SEED_ERRORS)
async def vision(request: Request[Any, Any, Any], data: JSONBody[VisionRequest]) -> Response[VisionCompletion]:
    req = data
    with seeds.errors_named_for(seeds.VISION_FIELDS):
        registry = services(request).models
        chat = seeds.vision_to_chat(req, registry, registry.models[0].id)
        out, headers = await complete_chat(services(request), chat, caller(request))
    return Response(seeds.vision_response(out), headers=headers)


@post("/run/{model:path}", status_code=200, responses=ERRORS)
async def fal_run(request: Request[Any, Any, Any], model: FromPath[str],
                  data: JSONBody[FalRequest]) -> Response[FalResponse]:
    req = data
    with seeds.errors_named_for(seeds.FAL_FIELDS):
        out, headers = await complete_chat(services(request), seeds.fal_to_chat(model.lstrip("/"), req),
                                           caller(request))
    return Response(seeds.fal_response(out), headers=headers)


def vlmrun_model(request: Request[Any, Any, Any], req: VlmRunRequest) -> str:
    return req.model or services(request).models.models[0].id


@post("/v1/image/generate", status_code=200, responses=ERRORS)
async def vlmrun_generate(request: Request[Any, Any, Any], data: JSONBody[VlmRunRequest]) -> Response[VlmRunResponse]:
    req = data
    created_at = seeds.now_iso()
    model = vlmrun_model(request, req)
    chat = seeds.vlmrun_to_chat(req, model)  # checks domain and body before anything runs
    if req.batch:  # a job: answer at once, the result is polled (GET below) or sent to callback_url
        who, queue = caller(request), request.app.state.jobs.queue
        job = await queue.new_job("vlmrun", model, msgspec.json.encode(req), webhook=req.callback_url, caller=who,
                                  webhook_param="callback_url")
        created_at = job.metadata["created_at"] = _iso(job.created)  # (what every later answer says too)
        headers = await admit_submission(services(request), who, model)  # 404 / 429 now; slots when it runs
        await queue.enqueue(job)
        return Response(VlmRunResponse(id=job.id, status="pending", created_at=created_at, usage=seeds.NOTHING_YET,
                                       domain=req.domain, metadata=req.metadata), headers=headers)
    with seeds.errors_named_for(seeds.VLMRUN_FIELDS, len(req.images)):
        out, headers = await complete_chat(services(request), chat, caller(request), max_tokens_at_most=True)
    return Response(seeds.vlmrun_response(req, f"vlmrun-{uuid.uuid4().hex}", created_at, out), headers=headers)


_STATES = {"queued": "pending", "running": "running"}


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat()


@get(["/v1/image/generate/{request_id:str}", "/v1/predictions/{request_id:str}"], responses={
    **ERRORS, 200: success(VlmRunResponse, "`pending` / `running`, then the stored response or `failed`.")})
async def vlmrun_status(request: Request[Any, Any, Any], request_id: FromPath[str]) -> Any:
    """A batch job's state: ``pending`` / ``running``, then the stored response (``completed``) or
    ``failed`` with the error. Only vlm.run jobs: another kind's id is a 404, as an unknown one."""
    view = await request.app.state.jobs.queue.result(request_id, caller(request).key_id)
    if view.kind and view.kind != "vlmrun":
        raise not_found(request_id)
    created_at = _iso(view.created)
    if view.state != "done":
        return VlmRunResponse(id=request_id, status=_STATES[view.state], created_at=created_at,  # type: ignore[arg-type]
                              usage=seeds.NOTHING_YET)
    if view.result is not None and view.result.ok:
        return Response(view.result.body, media_type=MediaType.JSON)
    return VlmRunResponse(id=request_id, status="failed", created_at=created_at, usage=seeds.NOTHING_YET,
                          error=view.error or "failed")
