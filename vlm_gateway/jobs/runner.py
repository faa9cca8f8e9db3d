"""What a worker does with a job: decode its body by ``kind`` and run it through the same pipeline
as the synchronous routes (never streamed), returning the body that route would have returned."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from vlm_gateway import seeds
from vlm_gateway.complete import complete_chat, complete_text
from vlm_gateway.errors import InvalidRequest
from vlm_gateway.jobs.classify import default_classify
from vlm_gateway.jobs.types import Job, JobOutcome, succeeded
from vlm_gateway.pipeline import Services
from vlm_gateway.schemas.openai import ChatCompletionRequest, CompletionRequest
from vlm_gateway.schemas.seeds import FalRequest, VisionRequest, VlmRunRequest


def classify(model: str, body: dict[str, Any]) -> str:
    """The default kinds plus vlm.run's shape (``images`` + ``domain``/``config``)."""
    if "images" in body and ("domain" in body or "config" in body):
        return "vlmrun"
    return default_classify(model, body)


def _decode(job: Job, kind: type, **overrides: Any) -> Any:
    data = msgspec.json.decode(job.body)
    if not isinstance(data, dict):
        raise InvalidRequest("the job's body must be a JSON object")
    return msgspec.convert({**data, **overrides}, kind)


async def _run_chat(svc: Services, job: Job, req: ChatCompletionRequest) -> Any:
    """Under the submitting key: its concurrency and tokens/min, waiting for a slot (never a 429)."""
    return (await complete_chat(svc, req, job.caller, queued=True))[0]


async def _chat(svc: Services, job: Job) -> Any:
    return await _run_chat(svc, job, _decode(job, ChatCompletionRequest, model=job.model, stream=False))


async def _completion(svc: Services, job: Job) -> Any:
    req = _decode(job, CompletionRequest, model=job.model, stream=False)
    return (await complete_text(svc, req, job.caller, queued=True))[0]


async def _fal(svc: Services, job: Job) -> Any:
    with seeds.errors_named_for(seeds.FAL_FIELDS):
        return seeds.fal_response(await _run_chat(svc, job, seeds.fal_to_chat(job.model, _decode(job, FalRequest))))


async def _vision(svc: Services, job: Job) -> Any:
    req = _decode(job, VisionRequest, model=job.model)
    with seeds.errors_named_for(seeds.VISION_FIELDS):
        return seeds.vision_response(await _run_chat(svc, job, seeds.vision_to_chat(req, (), job.model)))


async def _vlmrun(svc: Services, job: Job) -> Any:
    req = _decode(job, VlmRunRequest)
    with seeds.errors_named_for(seeds.VLMRUN_FIELDS, len(req.images)):
        out = (await complete_chat(svc, seeds.vlmrun_to_chat(req, job.model), job.caller, queued=True,
                                   max_tokens_at_most=True))[0]
    created = job.metadata.get("created_at") or seeds.now_iso()
    return seeds.vlmrun_response(req, job.id, created, out)


KINDS: dict[str, Callable[[Services, Job], Awaitable[Any]]] = {
    "chat": _chat, "completion": _completion, "fal": _fal, "vision": _vision, "vlmrun": _vlmrun,
}


def make_runner(services: Callable[[], Services]) -> Callable[[Job], Awaitable[JobOutcome]]:
    """A runner for ``build_jobs``: the payload on success; errors are raised (and stored as the
    synchronous route would have rendered them)."""

    async def run(job: Job) -> JobOutcome:
        handler = KINDS.get(job.kind)
        if handler is None:
            raise InvalidRequest(f"unknown job kind {job.kind!r}")
        return succeeded(await handler(services(), job))

    return run
