"""The job queue's data: what is submitted (``Job``), what a run produces (``JobOutcome``), what is
stored (``Completed``) and what the worker is handed (``Lease``, ``Claim``, ``Delivery``).

``JobOutcome`` is what the runner returns; :func:`succeeded`, :func:`failed` and
:func:`outcome_from_exception` build one. A runner may also just raise: the worker turns the exception
into an outcome the way the synchronous routes render it (a ``GatewayError`` keeps its status, type and
code; anything else is a 500).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import msgspec

from vlm_gateway.errors import ErrorBody, ErrorEnvelope, GatewayError, from_validation
from vlm_gateway.limits.rate import ANONYMOUS, Caller

log = logging.getLogger("vlm_gateway.jobs")

JobState = Literal["queued", "running", "done"]
#: What a cancel did: ``cancelled`` (it will never run, or was cancelled before), ``requested`` (it is
#: running: its worker stops it at its next heartbeat), ``finished`` (too late: it has its result).
CancelOutcome = Literal["cancelled", "requested", "finished"]


class Job(msgspec.Struct):
    """One submitted request. ``kind`` is opaque to the queue (the runner dispatches on it)."""

    id: str
    kind: str
    model: str
    body: bytes
    webhook: str | None = None
    created: float = 0.0
    metadata: dict[str, Any] = {}
    caller: Caller = ANONYMOUS  # the submitting key: the job runs under its concurrency and tokens/min


class JobOutcome(msgspec.Struct):
    """A run's result: ``ok`` with ``payload`` (a JSON-able value, or ``bytes`` of encoded JSON), or
    not ``ok`` with ``error`` (the message), ``status_code`` and optionally OpenAI's error type/code/param."""

    ok: bool
    payload: Any = None
    error: str | None = None
    status_code: int = 200
    error_type: str | None = None
    error_code: str | None = None
    error_param: str | None = None


class Completed(msgspec.Struct):
    """A finished job as stored: ``body`` is the result JSON, or OpenAI's error envelope when not ``ok``."""

    ok: bool
    status_code: int
    body: bytes
    error: str | None = None


class JobView(msgspec.Struct):
    """A job as the status/result API sees it (``result`` filled by ``queue.result`` once done)."""

    id: str
    state: JobState
    position: int | None = None
    error: str | None = None
    result: Completed | None = None
    kind: str = ""  # as submitted (a route answers only for the kinds it submits)
    created: float = 0.0  # submission time (s since the epoch)


class Lease(msgspec.Struct, frozen=True):
    """A job handed to a worker: the job id and the queue entry that must be acknowledged."""

    job_id: str
    entry: str


class Delivery(msgspec.Struct):
    """A webhook still to be delivered (persisted: ``attempts`` made so far, not before ``next_at``)."""

    job_id: str
    url: str
    result: Completed
    attempts: int = 0
    next_at: float = 0.0


class Claim(msgspec.Struct):
    """What a worker must do with a lease: ``run`` the job (``attempt``: 1 + earlier runs that died),
    ``deliver`` its webhook (the job ended, its worker died before delivering), or just ``ack``."""

    action: Literal["run", "deliver", "ack"]
    job: Job | None = None
    attempt: int = 0
    delivery: Delivery | None = None
    stopped: bool = False  # run: it was cancelled while an earlier run (whose worker died) ran: not run again


ENCODER = msgspec.json.Encoder()
JOB_DECODER = msgspec.json.Decoder(Job)
_ANY_DECODER = msgspec.json.Decoder()
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
                503: "service_unavailable", 504: "timeout"}

CANCELLED_MESSAGE = "the request was cancelled"


def succeeded(payload: Any) -> JobOutcome:
    """A successful outcome (``payload``: a JSON-able value, a Struct, or bytes of encoded JSON)."""
    return JobOutcome(ok=True, payload=payload)


def failed(message: str, status_code: int = 500, *, type: str | None = None, code: str | None = None,
           param: str | None = None) -> JobOutcome:
    """A failed outcome; ``type`` defaults from the status as in OpenAI's errors."""
    return JobOutcome(ok=False, error=message, status_code=status_code, error_type=type, error_code=code,
                      error_param=param)


def outcome_from_exception(exc: BaseException) -> JobOutcome:
    """The outcome the synchronous route would have rendered for ``exc``."""
    if isinstance(exc, (msgspec.ValidationError, msgspec.DecodeError)):
        exc = from_validation(exc)
    if isinstance(exc, GatewayError):
        return failed(exc.message, exc.status, type=exc.type, code=exc.code, param=exc.param)
    log.error("job runner failed", exc_info=exc)
    return failed("internal server error")


def error_body(message: str, status_code: int, *, type: str | None = None, code: str | None = None,
               param: str | None = None) -> bytes:
    """OpenAI's error envelope, encoded."""
    kind = type or _ERROR_TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
    return ENCODER.encode(ErrorEnvelope(ErrorBody(message, kind, param, code)))


def to_completed(outcome: JobOutcome) -> Completed:
    """What is stored for ``outcome`` (payload bytes must be valid JSON, else the job fails with a 500)."""
    if not outcome.ok:
        message = outcome.error or "the job failed"
        status = outcome.status_code if 400 <= outcome.status_code <= 599 else 500
        body = error_body(message, status, type=outcome.error_type, code=outcome.error_code,
                          param=outcome.error_param)
        return Completed(False, status, body, message)
    payload = outcome.payload
    try:
        if isinstance(payload, (bytes, bytearray, memoryview)):
            body = bytes(payload)
            _ANY_DECODER.decode(body)
        else:
            body = ENCODER.encode(payload)
    except (msgspec.DecodeError, TypeError) as exc:
        log.error("job runner returned a payload that is not JSON: %s", exc)
        return to_completed(failed("internal server error: the job's result is not JSON"))
    return Completed(True, 200, body, None)


def cancelled() -> Completed:
    """What a cancelled job stores (cancelled before it started, or stopped while it ran)."""
    return Completed(False, 400, error_body(CANCELLED_MESSAGE, 400, code="cancelled"), CANCELLED_MESSAGE)


def stored_error(result: Completed) -> GatewayError:
    """The stored error of a failed job as an exception that renders to the stored body and status."""
    err = _ANY_DECODER.decode(result.body).get("error") or {}
    exc = GatewayError(str(err.get("message") or result.error or "the job failed"),
                       param=err.get("param"), code=err.get("code"))
    exc.status = result.status_code  # type: ignore[misc]
    exc.type = str(err.get("type") or "server_error")  # type: ignore[misc]
    return exc
