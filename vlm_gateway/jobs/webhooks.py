"""Signed webhook delivery through the SSRF guard (the same ``guarded_request`` as image fetches).

Each attempt POSTs :class:`vlm_gateway.schemas.jobs.WebhookBody` (the same bytes on every attempt),
signed as Standard Webhooks (https://www.standardwebhooks.com/) sign, which is what OpenAI's SDK
checks (``client.webhooks.unwrap`` / ``verify_signature``) and the Standard Webhooks libraries of every
language::

    Content-Type: application/json
    X-Request-Id: <request id>
    webhook-id: <request id>                  the same on every attempt: receivers drop duplicates by it
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>

The key is the secret's bytes after ``whsec_`` (base64), or the secret itself when it has no such
prefix (as OpenAI's SDK reads it). With ``legacy_signature`` the project's earlier headers are sent too
(``X-Signature: sha256=<hex HMAC(body)>``, ``X-Timestamp``, ``X-Signature-Timestamped``). With no
secret configured no signature is sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Literal

import aiohttp
from msgspec import Raw

from vlm_gateway import metrics
from vlm_gateway.errors import InvalidRequest
from vlm_gateway.images.guard import Resolver, guarded_request, vet_url
from vlm_gateway.jobs.settings import WebhookSettings
from vlm_gateway.jobs.types import ENCODER, Delivery
from vlm_gateway.schemas.jobs import WebhookBody

log = logging.getLogger("vlm_gateway.jobs.webhooks")

SendResult = Literal["ok", "retry", "give_up"]


EVENT_PREFIX = "evt_"  # a job whose id is an event's (``evt_…``) has the event as its result: sent as it is


def webhook_body(delivery: Delivery) -> bytes:
    """The exact bytes POSTed for ``delivery`` (deterministic: every attempt and replica sends the same):
    ``{"request_id", "status", "payload", "error"}``, or an event job's event itself."""
    result = delivery.result
    if delivery.job_id.startswith(EVENT_PREFIX) and result.ok:
        return result.body
    body = WebhookBody(delivery.job_id, "OK" if result.ok else "ERROR",
                       Raw(result.body) if result.ok else None, None if result.ok else result.error)
    return ENCODER.encode(body)


def _key(secret: str) -> bytes:
    """The HMAC key of a secret: base64 after ``whsec_`` (Standard Webhooks), else the secret's bytes."""
    return base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()


def _standard(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def _legacy(secret: str, data: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def sign(secret: str, msg_id: str, body: bytes, timestamp: int, *, legacy: bool = False) -> dict[str, str]:
    """The signature headers for message ``msg_id`` with ``body``, sent at ``timestamp``."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": _standard(secret, msg_id, timestamp, body)}
    if legacy:
        headers |= {"X-Signature": _legacy(secret, body), "X-Timestamp": str(timestamp),
                    "X-Signature-Timestamped": _legacy(secret, f"{timestamp}.".encode() + body)}
    return headers


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, max_age_s: float = 300) -> bool:
    """A receiver's check (Standard Webhooks): one of the ``webhook-signature`` values matches, and the
    timestamp is within ``max_age_s`` of now (replay protection)."""
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > max_age_s:
        return False
    expected = _standard(secret, msg_id, stamp, body)
    return any(hmac.compare_digest(expected, sig) for sig in headers.get("webhook-signature", "").split())


class WebhookSender:
    """Sends one attempt of a job's delivery (the retry schedule and its persistence are the worker's)."""

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
        """One POST of a job's result: ``ok`` on a 2xx, ``give_up`` when the guard refuses the URL, else
        ``retry``."""
        return await self.post(delivery.url, delivery.job_id, webhook_body(delivery))

    async def post(self, url: str, msg_id: str, body: bytes) -> SendResult:
        """One signed POST of ``body`` as message ``msg_id`` (counted in the metrics by outcome)."""
        outcome = await self._post(url, msg_id, body)
        metrics.WEBHOOKS.labels(outcome).inc()
        return outcome

    async def _post(self, url: str, msg_id: str, body: bytes) -> SendResult:
        headers = {"Content-Type": "application/json", "X-Request-Id": msg_id, "User-Agent": "vlm-gateway-webhook"}
        if self.settings.secret:
            headers.update(sign(self.settings.secret, msg_id, body, int(time.time()),
                                legacy=self.settings.legacy_signature))
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with guarded_request(self.session, "POST", url, self.settings, self.resolver,
                                       headers=headers, data=body, timeout=timeout, param="webhook") as got:
                status = got.response.status
        except InvalidRequest as exc:
            log.warning("webhook for %s refused: %s", msg_id, exc.message)
            return "give_up" if exc.code in ("url_not_allowed", "too_many_redirects") else "retry"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.info("webhook for %s failed: %s", msg_id, type(exc).__name__)
            return "retry"
        if 200 <= status < 300:
            return "ok"
        log.info("webhook for %s answered %d", msg_id, status)
        return "retry"
