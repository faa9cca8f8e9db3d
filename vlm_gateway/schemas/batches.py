"""Wire formats of OpenAI's Batch API (``/v1/batches``) and of its input and output files: data only.

An input file (purpose ``batch``) has one request a line::

    {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": ..., "messages": ...}}

The output file (purpose ``batch_output``) has one ``BatchOutputLine`` per request that ran and
succeeded; the error file one per request that failed (``response`` holds the failed HTTP answer) or
never ran (``response`` null, ``error`` says why: ``batch_expired``, ``batch_cancelled``, ...).
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Raw, Struct, field

BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                      "cancelled"]
BatchEndpoint = Literal["/v1/chat/completions", "/v1/responses", "/v1/completions"]


class BatchCreate(Struct, kw_only=True):
    """``POST /v1/batches``. Unknown fields (e.g. the SDK's ``output_expires_after``) are ignored."""

    input_file_id: str
    endpoint: BatchEndpoint
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None


class BatchError(Struct, kw_only=True):
    """Why a batch failed (``Batch.errors.data``); ``line`` is 1-based, when one line is to blame."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[BatchError] = []


class BatchRequestCounts(Struct, kw_only=True):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchInputTokensDetails(Struct, kw_only=True):
    cached_tokens: int = 0


class BatchOutputTokensDetails(Struct, kw_only=True):
    reasoning_tokens: int = 0


class BatchUsage(Struct, kw_only=True):
    """Tokens of the requests that ran (prompt tokens as input, completion tokens as output)."""

    input_tokens: int = 0
    input_tokens_details: BatchInputTokensDetails = field(default_factory=BatchInputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: BatchOutputTokensDetails = field(default_factory=BatchOutputTokensDetails)
    total_tokens: int = 0


class Batch(Struct, kw_only=True):
    """OpenAI's Batch object. Timestamps are Unix seconds; unset ones are null."""

    id: str  # batch_...
    object: Literal["batch"] = "batch"
    endpoint: BatchEndpoint
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: Literal["24h"] = "24h"
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = field(default_factory=BatchRequestCounts)
    metadata: dict[str, str] | None = None
    model: str | None = None
    usage: BatchUsage | None = None


class BatchEventData(Struct, kw_only=True):
    id: str  # the batch


class BatchEvent(Struct, kw_only=True):
    """The webhook OpenAI sends when a batch ends (``client.webhooks.unwrap`` parses it)."""

    id: str  # evt_…: also the ``webhook-id`` header
    object: Literal["event"] = "event"
    created_at: int
    type: Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]
    data: BatchEventData


class BatchList(Struct, kw_only=True):
    """``GET /v1/batches``: one cursor page, newest first (``after=last_id`` for the next while ``has_more``)."""

    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchInputLine(Struct, kw_only=True):
    """One line of an input file."""

    custom_id: str
    method: str
    url: str
    body: dict[str, Any]


class BatchResponse(Struct, kw_only=True):
    """The HTTP answer a request got: the route's status and JSON body (an error envelope when it failed)."""

    status_code: int
    request_id: str
    body: Raw


class BatchLineError(Struct, kw_only=True):
    """Why a request never ran."""

    code: str
    message: str


class BatchOutputLine(Struct, kw_only=True):
    """One line of an output or error file."""

    id: str  # batch_req_...
    custom_id: str
    response: BatchResponse | None = None
    error: BatchLineError | None = None
