"""Webhooks: signed body, retries with exponential backoff against a local receiver, delivery resumed by
another worker after a crash, the SSRF guard at submission and at delivery."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import time

import msgspec
import openai
import pytest

from tests.gateway.jobs.conftest import SECRET, eventually, fast_settings
from tests.gateway.jobs.test_worker import make_worker
from vlm_gateway import metrics
from vlm_gateway.errors import InvalidRequest
from vlm_gateway.jobs import build_jobs, failed, succeeded
from vlm_gateway.jobs.settings import WebhookSettings
from vlm_gateway.jobs.types import Completed, Delivery
from vlm_gateway.jobs.webhooks import sign, verify, webhook_body


async def ok_runner(job):
    return succeeded({"echo": msgspec.json.decode(job.body)})


WHSEC = "whsec_" + base64.b64encode(b"a 32-byte key for the test suite").decode()


@pytest.mark.parametrize("secret", ["s3cret", WHSEC])
def test_standard_webhooks_signature_as_openais_sdk_checks_it(secret: str) -> None:
    body = b'{"request_id":"r","status":"OK","payload":{},"error":null}'
    now = int(time.time())
    headers = sign(secret, "r", body, now)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "r" and headers["webhook-signature"].startswith("v1,")
    sdk = openai.OpenAI(api_key="unused", webhook_secret=secret).webhooks
    sdk.verify_signature(body, headers)  # raises when it does not match
    assert sdk.unwrap(body, headers) is not None
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.verify_signature(body + b" ", headers)
    assert verify(secret, body, headers)
    assert not verify("other", body, headers)
    assert not verify(secret, body + b" ", headers)
    assert not verify(secret, body, {**headers, "webhook-id": "r2"})  # the id is signed too
    old = sign(secret, "r", body, 1_700_000_000)
    assert not verify(secret, body, old)  # an old timestamp: replay refused


def test_legacy_headers_only_when_asked() -> None:
    body = b"{}"
    headers = sign("s3cret", "r", body, 1_700_000_000, legacy=True)
    assert headers["X-Signature"] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Timestamp"] == "1700000000" and headers["X-Signature-Timestamped"].startswith("sha256=")
    assert "X-Signature" not in sign("s3cret", "r", body, 1_700_000_000)


def test_a_whsec_secret_must_carry_a_key() -> None:
    with pytest.raises(ValueError, match="base64"):
        WebhookSettings(secret="whsec_!!not base64!!")


def test_webhook_body_embeds_the_stored_result_verbatim() -> None:
    ok = Delivery("r1", "http://x/", Completed(True, 200, b'{"a": [1, 2]}'))
    assert webhook_body(ok) == b'{"request_id":"r1","status":"OK","payload":{"a": [1, 2]},"error":null}'
    bad = Delivery("r2", "http://x/", Completed(False, 400, b'{"error": {}}', "bad"))
    assert msgspec.json.decode(webhook_body(bad)) == {"request_id": "r2", "status": "ERROR", "payload": None,
                                                      "error": "bad"}


def deliveries(outcome: str) -> float:
    return metrics.WEBHOOKS.labels(outcome)._value.get()


async def test_delivered_signed_after_retries_with_backoff(queue, settings, session, receiver) -> None:
    receiver.fail_first = 4
    retries, oks = deliveries("retry"), deliveries("ok")
    worker = make_worker(queue, ok_runner, settings, session)
    await worker.start()
    try:
        job = await queue.submit("chat", "m", b'{"q": 1}', webhook=receiver.url)
        await receiver.wait(5)
        await asyncio.sleep(0.1)
    finally:
        await worker.stop()
    assert len(receiver.hooks) == 5
    assert (deliveries("retry") - retries, deliveries("ok") - oks) == (4, 1)  # /metrics counts each attempt
    assert len({hook.body for hook in receiver.hooks}) == 1  # the same bytes every time
    for hook in receiver.hooks:
        assert verify(SECRET, hook.body, hook.headers, max_age_s=60)
        assert hook.headers["webhook-id"] == job.id  # the same id on every attempt
        assert hook.headers["X-Request-Id"] == job.id and hook.headers["Content-Type"] == "application/json"
    assert msgspec.json.decode(receiver.hooks[0].body) == {
        "request_id": job.id, "status": "OK", "payload": {"echo": {"q": 1}}, "error": None}
    gaps = [b.at - a.at for a, b in itertools.pairwise(receiver.hooks)]
    base = settings.webhook.base_delay_s
    for i, gap in enumerate(gaps):  # base, 2·base, 4·base, 8·base after each failure (load only adds)
        assert gap >= base * 2**i * 0.95, gaps


async def test_gives_up_after_the_configured_attempts(queue, settings, session, receiver) -> None:
    assert fast_settings().webhook.attempts >= 6  # "retried at least 5 times"
    receiver.status = 503
    worker = make_worker(queue, ok_runner, settings, session)
    await worker.start()
    try:
        job = await queue.submit("chat", "m", b"{}", webhook=receiver.url)
        await receiver.wait(settings.webhook.attempts)
        await asyncio.sleep(0.3)
    finally:
        await worker.stop()
    assert len(receiver.hooks) == settings.webhook.attempts
    assert (await queue.result(job.id)).result.ok  # the job's own result is unaffected


async def test_error_outcome_is_webhooked_as_error(queue, settings, session, receiver) -> None:
    async def runner(job):
        return failed("model not loaded", 503)

    worker = make_worker(queue, runner, settings, session)
    await worker.start()
    try:
        job = await queue.submit("chat", "m", b"{}", webhook=receiver.url)
        await receiver.wait(1)
    finally:
        await worker.stop()
    assert msgspec.json.decode(receiver.hooks[0].body) == {
        "request_id": job.id, "status": "ERROR", "payload": None, "error": "model not loaded"}


async def test_delivery_resumes_on_another_worker_after_a_crash(make_queue, session, receiver) -> None:
    settings = fast_settings(webhook={"base_delay_s": 0.25})
    queue = make_queue(settings)
    receiver.fail_first = 2
    worker_a = make_worker(queue, ok_runner, settings, session, name="a")
    await worker_a.start()
    job = await queue.submit("chat", "m", b"{}", webhook=receiver.url)
    await receiver.wait(2)  # two failed attempts; a is now waiting 0.5 s before the third
    await worker_a.stop(0, release=False)
    worker_b = make_worker(queue, ok_runner, settings, session, name="b")
    await worker_b.start()
    try:
        await receiver.wait(3)
        await asyncio.sleep(0.3)
    finally:
        await worker_b.stop()
    assert len(receiver.hooks) == 3  # attempts counted across workers, delivered once, not re-run
    assert (await queue.result(job.id)).state == "done"


async def test_no_secret_sends_unsigned(queue, session, receiver) -> None:
    settings = fast_settings(webhook={"secret": ""})
    worker = make_worker(queue, ok_runner, settings, session)
    await worker.start()
    try:
        await queue.submit("chat", "m", b"{}", webhook=receiver.url)
        await receiver.wait(1)
    finally:
        await worker.stop()
    assert "webhook-signature" not in receiver.hooks[0].headers


async def test_the_guard_refuses_loopback_unless_allowed(session, receiver) -> None:
    jobs = build_jobs(fast_settings(webhook={"allow_loopback": False}), session, ok_runner)
    with pytest.raises(InvalidRequest) as info:
        await jobs.queue.submit("chat", "m", b"{}", webhook=receiver.url)
    assert info.value.code == "url_not_allowed" and info.value.param == "webhook"
    with pytest.raises(InvalidRequest):
        await jobs.queue.submit("chat", "m", b"{}", webhook="file:///etc/passwd")


async def test_the_guard_also_applies_at_delivery(queue, session, receiver) -> None:
    """A webhook that got in (e.g. the policy changed since) is refused when sent, and not retried."""
    settings = fast_settings(webhook={"allow_loopback": False})
    worker = make_worker(queue, ok_runner, settings, session)
    await worker.start()
    try:
        job = await queue.submit("chat", "m", b"{}", webhook=receiver.url)  # this queue does not vet
        await eventually(lambda: _acked(queue, job.id))
    finally:
        await worker.stop()
    assert receiver.hooks == []


async def _acked(queue, job_id):
    return (await queue.status(job_id)).state == "done" and await queue.reclaim("x", 5) == [] \
        and await queue.take("x", 5, 0.01) == []
