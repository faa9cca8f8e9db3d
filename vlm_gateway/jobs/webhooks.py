"""Signed webhook delivery through the SSRF guard (the same ``guarded_request`` as image fetches).

Each attempt POSTs :class:`vlm_gateway.schemas.jobs.WebhookBody` (the same bytes on every attempt) with::

    Content-Type: application/json
    X-Request-Id: <request id>
    X-Signature: sha256=<hex HMAC-SHA256(secret, body)>
    X-Timestamp: <unix seconds of this attempt>
    X-Signature-Timestamped: sha256=<hex HMAC-SHA256(secret, "<X-Timestamp>." + body)>

``X-Signature`` authenticates the body; receivers that also want replay protection verify
``X-Signature-Timestamped`` and reject old timestamps (:func:`verify` does both). With no secret
configured the signature headers are left out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Literal

import aiohttp
from msgspec import Raw

from vlm_gateway.errors import InvalidRequest
from vlm_gateway.images.guard import Resolver, guarded_request, vet_url
from vlm_gateway.jobs.settings import WebhookSettings
from vlm_gateway.jobs.types import ENCODER, Delivery
from vlm_gateway.schemas.jobs import WebhookBody

log = logging.getLogger("vlm_gateway.jobs.webhooks")

SendResult = Literal["ok", "retry", "give_up"]


def webhook_body(delivery: Delivery) -> bytes:
    """The exact bytes POSTed for ``delivery`` (deterministic: every attempt and replica sends the same)."""
    result = delivery.result
    body = WebhookBody(delivery.job_id, "OK" if result.ok else "ERROR",
                       Raw(result.body) if result.ok else None, None if result.ok else result.error)
    return ENCODER.encode(body)


def _hmac(secret: str, data: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The signature headers for ``body`` sent at ``timestamp``."""
    return {"X-Signature": _hmac(secret, body), "X-Timestamp": str(timestamp),
            "X-Signature-Timestamped": _hmac(secret, f"{timestamp}.".encode() + body)}


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, max_age_s: float | None = None) -> bool:
    """A receiver's check: ``X-Signature`` matches, and with ``max_age_s`` the timestamped one too."""
    if not hmac.compare_digest(headers.get("X-Signature", ""), _hmac(secret, body)):
        return False
    if max_age_s is None:
        return True
    stamp = headers.get("X-Timestamp", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > max_age_s:
        return False
    return hmac.compare_digest(headers.get("X-Signature-Timestamped", ""), _hmac(secret, f"{stamp}.".encode() + body))


class WebhookSender:
    """Sends one attempt of a delivery; the retry schedule and its persistence are the worker's."""

    def __init__(self, session: aiohttp.ClientSession, settings: WebhookSettings,
                 resolver: Resolver | None = None) -> None:
        self.session = session
        self.settings = settings
        self.resolver = resolver
        if not settings.secret:
            log.warning("no webhook secret configured (jobs.webhook.secret): webhooks are sent unsigned")

    async def vet(self, url: str) -> None:
        """Refuse a webhook URL at submission (``InvalidRequest``, param ``webhook``), as delivery would."""
        await vet_url(url, self.settings, self.resolver, param="webhook")

    async def send(self, delivery: Delivery) -> SendResult:
        """One POST: ``ok`` on a 2xx, ``give_up`` when the guard refuses the URL, else ``retry``."""
        body = webhook_body(delivery)
        headers = {"Content-Type": "application/json", "X-Request-Id": delivery.job_id,
                   "User-Agent": "vlm-gateway-webhook"}
        if self.settings.secret:
            headers.update(sign(self.settings.secret, body, int(time.time())))
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with guarded_request(self.session, "POST", delivery.url, self.settings, self.resolver,
                                       headers=headers, data=body, timeout=timeout, param="webhook") as got:
                status = got.response.status
        except InvalidRequest as exc:
            log.warning("webhook for %s refused: %s", delivery.job_id, exc.message)
            return "give_up" if exc.code in ("url_not_allowed", "too_many_redirects") else "retry"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.info("webhook for %s failed: %s", delivery.job_id, type(exc).__name__)
            return "retry"
        if 200 <= status < 300:
            return "ok"
        log.info("webhook for %s answered %d", delivery.job_id, status)
        return "retry"
