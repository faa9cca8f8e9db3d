"""The batch's two job kinds, plugged into the app's job runner by ``with_batches``.

Both ride the durable job queue (vlm_gateway/jobs/), so a replica that dies mid-way leaves its jobs to
be redelivered to another one; each step below is safe to repeat.

``batch`` (fan-out, one per batch): moves the batch ``validating`` → ``in_progress``, reads the input
file and queues one ``batch_line`` job per request, ``enqueue_chunk`` at a time, remembering how far it
got (``enqueued``: a redelivered fan-out resumes there) and looking for a cancellation between chunks
(then it stops and the batch waits only for the lines already queued). It keeps at most
``max_queued_lines`` of the batch on the queue (queued or running: ``enqueued - recorded``), so a job
queued after a big batch waits for that many of its lines, not all of them, and batches take turns.
While the batch has no room it waits aside (its worker slot runs lines meanwhile), looking again every
``ROOM_POLL_S``. Past its completion window it stops as a cancellation does (the lines never queued are
``batch_expired``). After ``FAN_OUT_RUN_S`` (or a little before ``jobs.job_timeout_s``) it queues a
fresh fan-out job to go on from where it got: no one job waits for hours, so replicas restarted while a
big batch runs never use up its attempts (``jobs.max_attempts``).

``batch_line`` (one per request): claims the line (a duplicate job, or a line already recorded, does
nothing), then runs the request through the app's own runner, exactly as ``POST /queue`` runs a chat
or completions body (the same pipeline as the HTTP route, under the batch owner's key: its
concurrency and tokens/min, waiting for a slot), or, for ``/v1/responses``, through the Responses
route's own functions. It records the result (``completed`` / ``failed``), or ``skipped`` without
running when the batch is cancelling or past its window. The line whose record completes the batch
finalizes it (batches.finalize).

A line whose job keeps dying with its replica is recorded as failed at its last attempt instead of
being run again (``jobs.max_attempts``), so that the batch still ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from vlm_gateway.batches.finalize import finalize
from vlm_gateway.batches.lines import error_line, output_line
from vlm_gateway.batches.service import EVENT, FAN_OUT, LINE, BatchService
from vlm_gateway.batches.store import ALREADY_RECORDED, CLAIMED_ELSEWHERE, TERMINAL, BatchRecord, Counts, LineKind
from vlm_gateway.jobs.types import (
    Completed,
    Job,
    JobOutcome,
    failed,
    outcome_from_exception,
    succeeded,
    to_completed,
)
from vlm_gateway.jobs.worker import Runner
from vlm_gateway.limits.rate import ADMISSION_WAIT
from vlm_gateway.responses_api import run as responses_run
from vlm_gateway.schemas.responses import ResponsesRequest

log = logging.getLogger("vlm_gateway.batches")
#: The app runner's job kind for each endpoint that has one (jobs/runner.py).
KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
ROOM_POLL_S = 0.25  # how often a fan-out that waits for room on the queue looks at its batch again
FAN_OUT_RUN_S = 300.0  # one fan-out job's run at most; then a fresh one goes on


class LineMeta(msgspec.Struct):
    """A line job's metadata."""

    batch_id: str
    index: int
    custom_id: str


async def fan_out(service: BatchService, job: Job) -> None:
    batch_id = job.body.decode()
    while True:
        record = await service.store.get(batch_id)
        if record is None or record.status not in ("validating", "in_progress", "cancelling"):
            return
        if record.status != "validating":
            break
        await service.move(record, "in_progress", in_progress_at=int(time.time()))
    if record.status == "cancelling":
        await _stop_at(service, batch_id, record.counts.enqueued)
        return
    lines = await service.input_lines(record)
    if lines is None:
        await service.fail(batch_id, "input_file_missing", "the input file was deleted before the batch started")
        return
    queue, chunk = service.jobs().queue, service.settings.enqueue_chunk
    window = service.settings.max_queued_lines or len(lines)
    limit = service.services().settings.jobs.job_timeout_s
    until = time.monotonic() + min(max(limit - 1, limit * 0.9) if limit > 0 else math.inf, FAN_OUT_RUN_S)
    start = record.counts.enqueued

    async def hand_over() -> None:  # out of time: a fresh fan-out job goes on from where this one got
        await queue.submit(FAN_OUT, job.model, job.body, metadata=job.metadata, caller=job.caller)

    first = start
    while start < len(lines):
        if start > first and time.monotonic() >= until:  # out of time while queueing (it never waited)
            await hand_over()
            return
        current = await _when_room(service, batch_id, window, until, hand_over)
        if current is None or current.status not in ("in_progress", "cancelling"):
            return
        start = max(start, current.counts.enqueued)  # (a duplicate fan-out may have gone further)
        if current.status == "cancelling" or time.time() >= (current.batch.expires_at or 0):
            await _stop_at(service, batch_id, start)
            return
        queued = current.counts.enqueued - current.counts.recorded
        end = min(start + min(chunk, window - queued), len(lines))
        for line in lines[start:end]:
            meta = msgspec.to_builtins(LineMeta(batch_id, line.index, line.custom_id))
            await queue.submit(LINE, line.model, line.body, metadata=meta, caller=job.caller)
        await service.store.set_enqueued(batch_id, end)
        start = end


def _has_room(record: BatchRecord, window: int) -> bool:
    """Whether the fan-out has something to do now: queue a line, or stop."""
    counts = record.counts
    return (record.status != "in_progress" or counts.enqueued - counts.recorded < window
            or time.time() >= (record.batch.expires_at or 0))


async def _when_room(service: BatchService, batch_id: str, window: int, until: float,
                     hand_over: Callable[[], Awaitable[None]]) -> BatchRecord | None:
    """The batch once fewer than ``window`` of its lines are on the queue, its status has changed or its
    completion window has ended; None once it is gone, or at ``until`` (monotonic), when ``hand_over``
    has queued the fan-out's successor. Waits aside: the worker's slot runs other jobs (this batch's
    lines among them) meanwhile. The successor is queued before the slot is taken back: that wait may
    outlast the job's time limit, and the worker then stops this job where it is."""
    record = await service.store.get(batch_id)
    if record is None or _has_room(record, window):
        return record
    aside = ADMISSION_WAIT.get()
    async with aside() if aside is not None else contextlib.nullcontext():
        while not _has_room(record, window):
            if time.monotonic() >= until:
                await hand_over()
                return None
            await asyncio.sleep(ROOM_POLL_S)
            record = await service.store.get(batch_id)
            if record is None:
                return None
    return record


async def _stop_at(service: BatchService, batch_id: str, enqueued: int) -> None:
    """A cancellation (or the completion window's end) stopped the fan-out: wait for the ``enqueued``
    lines only."""
    await _maybe_finalize(service, batch_id, await service.store.set_planned(batch_id, enqueued))


async def _maybe_finalize(service: BatchService, batch_id: str, counts: Counts) -> None:
    if counts.recorded >= counts.planned:
        await finalize(service, batch_id)


def _tokens(payload: Any) -> tuple[int, int, int]:
    """(input, output, of the input those the prefix cache held) of a line's answer."""
    usage = getattr(payload, "usage", None)
    if usage is None:
        return 0, 0, 0
    if hasattr(usage, "input_tokens"):  # a Responses API response
        details = usage.input_tokens_details
        return usage.input_tokens, usage.output_tokens, details.cached_tokens if details else 0
    details = usage.prompt_tokens_details
    return usage.prompt_tokens, usage.completion_tokens, details.cached_tokens if details else 0


async def _respond(service: BatchService, job: Job) -> JobOutcome:
    """A ``/v1/responses`` request, as the route runs one (stored unless ``store`` is false)."""
    req = msgspec.json.decode(job.body, type=ResponsesRequest)
    store = service.responses()
    turn = await responses_run.start(store, req, job.caller)
    response, _ = await responses_run.complete(service.services(), store, turn, job.caller, queued=True)
    return succeeded(response)


async def _execute(service: BatchService, runner: Runner, job: Job,
                   endpoint: str) -> tuple[Completed, tuple[int, int, int]]:
    """Run the request: what the route would have answered, and the tokens it used. Within
    ``jobs.job_timeout_s`` (a little less, so that the line is still recorded, as a 504)."""
    limit = service.services().settings.jobs.job_timeout_s
    deadline = asyncio.timeout(max(limit - 1, limit * 0.9) if limit > 0 else None)
    try:
        async with deadline:
            if endpoint == "/v1/responses":
                outcome = await _respond(service, job)
            else:
                outcome = await runner(msgspec.structs.replace(job, kind=KINDS[endpoint], metadata={}))
    except Exception as exc:  # the route would have answered with this error
        outcome = (failed("the request did not finish within the job time limit", 504, type="timeout",
                          code="timeout") if deadline.expired() else outcome_from_exception(exc))
    done = to_completed(outcome)
    return done, _tokens(outcome.payload) if done.ok else (0, 0, 0)


async def run_line(service: BatchService, runner: Runner, job: Job) -> None:
    meta = msgspec.convert(job.metadata, LineMeta)
    record = await service.store.get(meta.batch_id)
    if record is None or record.status in TERMINAL:
        return
    runs = await service.store.begin_line(meta.batch_id, meta.index, job.id)
    if runs == CLAIMED_ELSEWHERE:
        return
    if runs == ALREADY_RECORDED:  # redelivered after recording: the finalization may not have happened
        await _maybe_finalize(service, meta.batch_id, record.counts)
        return
    kind: LineKind
    tokens = (0, 0, 0)
    max_attempts = service.services().settings.jobs.max_attempts
    if record.status == "cancelling":
        kind, entry = "skipped", error_line(meta.custom_id, "batch_cancelled",
                                            "the batch was cancelled before this request ran")
    elif time.time() >= (record.batch.expires_at or 0):
        kind, entry = "skipped", error_line(meta.custom_id, "batch_expired",
                                            "the batch's completion window ended before this request ran")
    elif runs > 1 and runs >= max_attempts:
        log.error("batch %s line %d abandoned after %d runs", meta.batch_id, meta.index, runs - 1)
        kind, entry = "failed", error_line(meta.custom_id, "request_abandoned",
                                           f"the request was abandoned after {runs - 1} runs that did not finish")
    else:
        done, tokens = await _execute(service, runner, job, record.batch.endpoint)
        kind, entry = ("completed" if done.ok else "failed"), output_line(meta.custom_id, done.status_code, done.body)
    _, counts = await service.store.record_line(meta.batch_id, meta.index, kind, entry, *tokens)
    await _maybe_finalize(service, meta.batch_id, counts)


def with_batches(runner: Runner, service: BatchService) -> Runner:
    """The app's job runner, also running batch jobs (kinds ``batch``, ``batch_line`` and
    ``batch_event``: its result is the event, which its webhook sends)."""

    async def run(job: Job) -> JobOutcome:
        if job.kind == FAN_OUT:
            await fan_out(service, job)
        elif job.kind == LINE:
            await run_line(service, runner, job)
        elif job.kind == EVENT:
            return succeeded(job.body)
        else:
            return await runner(job)
        return succeeded(None)

    return run
