"""Wire formats of the async job queue (fal-style ``/queue`` routes and webhooks): data only."""

from __future__ import annotations

from typing import Literal

from msgspec import UNSET, Raw, Struct, UnsetType

QueueStatusName = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


class QueueSubmitted(Struct):
    """``POST /queue/{model}``: where to poll, fetch and cancel (absolute URLs)."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


class QueueStatus(Struct):
    """``GET /queue/requests/{id}/status`` (also the body of a 202 from the result route)."""

    status: QueueStatusName
    queue_position: int | UnsetType = UNSET  # IN_QUEUE only: jobs ahead of this one (approximate)
    error: str | UnsetType = UNSET  # COMPLETED only, when the job failed or was cancelled
    response_url: str | UnsetType = UNSET  # where the result is (as fal's status answers say)
    status_url: str | UnsetType = UNSET


class QueueCancelled(Struct):
    """``PUT /queue/requests/{id}/cancel``: 202 ``CANCELLATION_REQUESTED`` (queued: it never runs; running:
    it is stopped) or 400 ``ALREADY_COMPLETED``."""

    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]


class WebhookBody(Struct):
    """What is POSTed to the webhook when a job ends (``payload``: the stored result JSON, verbatim)."""

    request_id: str
    status: Literal["OK", "ERROR"]
    payload: Raw | None
    error: str | None
