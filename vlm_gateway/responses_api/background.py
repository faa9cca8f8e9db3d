"""``background: true``: the response runs as a job on the durable queue (vlm_gateway/jobs/).

``submit`` stores the response as ``queued`` (with the chat request to run) and queues a job of kind
``response`` whose body names it; it answers at once. The job (``run_job``, plugged into the app's
runner by ``with_responses``) marks it ``in_progress``, runs the chat request as an unstreamed response
is run (``run.whole``) under the submitting key (its concurrency and tokens/min, waiting for a slot as
every job does) and stores the outcome: ``completed`` / ``incomplete``, or ``failed`` with the error.

``cancel`` works while the response is queued or running, from any replica: it sets the store's cancel
flag. A job that finds the flag before it starts does nothing; a running one looks for it every
``responses.cancel_poll_s`` and then stops the chat request (closing the engine stream aborts the
engine request) and stores nothing more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from vlm_gateway.errors import GatewayError, InvalidRequest
from vlm_gateway.jobs import JobServices
from vlm_gateway.jobs.types import Job, JobOutcome, succeeded
from vlm_gateway.jobs.worker import Runner
from vlm_gateway.limits.rate import Caller
from vlm_gateway.pipeline import Services, admit_submission
from vlm_gateway.responses_api.convert import Converted
from vlm_gateway.responses_api.output import failed
from vlm_gateway.responses_api.run import Turn, fitted, whole
from vlm_gateway.responses_api.store import UNFINISHED, ResponseStore, StoredResponse
from vlm_gateway.schemas.responses import ResponseObject

log = logging.getLogger("vlm_gateway")
JOB_KIND = "response"


class _JobBody(msgspec.Struct):
    response_id: str


async def submit(svc: Services, jobs: JobServices, store: ResponseStore, base: ResponseObject,
                 converted: Converted, caller: Caller) -> ResponseObject:
    """Queue the response (404 / 429 now, as for any job); it is returned ``queued``."""
    if not base.store:
        raise InvalidRequest("background responses must be stored: leave store at true", param="store")
    await admit_submission(svc, caller, base.model)
    response = msgspec.structs.replace(base, status="queued")
    await store.save(StoredResponse(caller.key_id, response, converted.history, converted.chat, converted.params))
    await jobs.queue.submit(JOB_KIND, base.model, msgspec.json.encode(_JobBody(response.id)),
                            metadata={"response_id": response.id}, caller=caller)
    return response


async def cancel(store: ResponseStore, response_id: str, caller: Caller) -> ResponseObject:
    response = (await store.get(response_id, caller)).response
    if not response.background:
        raise InvalidRequest("Cannot cancel a synchronous response.", param="response_id")
    if response.status != "cancelled":
        if response.status not in UNFINISHED:
            raise InvalidRequest(f"Cannot cancel a {response.status} response.", param="response_id")
        await store.cancel(response_id)
    return msgspec.structs.replace(response, status="cancelled")


async def _until_done_or_cancelled(store: ResponseStore, record: StoredResponse,
                                   caller: Caller, svc: Services) -> ResponseObject | None:
    """The finished response, or None when it was cancelled while it ran."""
    assert record.chat is not None
    turn = Turn(Converted(record.chat, record.history, record.params), record.response)

    async def attempt(converted: Converted, queued: bool) -> ResponseObject:  # (truncation "auto" as well)
        return (await whole(svc, converted, record.response, caller, queued))[0]

    task = asyncio.create_task(fitted(turn, attempt, queued=True))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=store.settings.cancel_poll_s)
            if done:
                return task.result()[0]  # (the response, the request it fitted)
            if await store.cancelled(record.response.id):
                return None
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def run_job(svc: Services, store: ResponseStore, job: Job) -> JobOutcome:
    response_id = msgspec.json.decode(job.body, type=_JobBody).response_id
    record = await store.find(response_id)
    if record is None or record.chat is None or await store.cancelled(response_id):
        return succeeded(None)  # deleted, cancelled, or already run
    record.response = msgspec.structs.replace(record.response, status="in_progress")
    await store.save(record)
    try:
        done = await _until_done_or_cancelled(store, record, job.caller, svc)
        if done is None:
            return succeeded(None)
        response: ResponseObject = done
    except Exception as exc:  # stored as the response's error: the job itself ran
        if not isinstance(exc, GatewayError):
            log.exception("background response %s failed", response_id)
            exc = GatewayError("internal server error")
        response = failed(record.response, exc)
    if not await store.cancelled(response_id):
        await store.save(StoredResponse(record.owner, response, record.history))
    return succeeded(response)


def with_responses(runner: Runner, services: Callable[[], Services], store: ResponseStore) -> Runner:
    """The app's job runner, also running background responses (jobs of kind ``response``)."""

    async def run(job: Job) -> JobOutcome:
        if job.kind != JOB_KIND:
            return await runner(job)
        return await run_job(services(), store, job)

    return run
