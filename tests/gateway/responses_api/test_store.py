"""Stored responses: the state backends' expiring values (both backends), the ResponseStore on them, and
two gateway apps sharing one Redis prefix (as two replicas do): a response made on one is read,
continued, cancelled and deleted on the other."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import pytest
import redis
from litestar.testing import TestClient
from openai.types.responses import Response

from tests.gateway.responses_api.conftest import app_for, settings, wait_for
from tests.gateway.state.fixtures import backend, prefix  # noqa: F401
from tests.helpers import BOB, TEST_KEYS, TEST_REDIS_URL, auth, require_redis
from vlm_gateway.errors import InvalidRequest, NotFound
from vlm_gateway.files import FileSettings
from vlm_gateway.jobs.settings import JobSettings
from vlm_gateway.limits import LimitSettings
from vlm_gateway.limits.rate import ANONYMOUS, Caller
from vlm_gateway.responses_api.settings import ResponsesSettings
from vlm_gateway.responses_api.store import ResponseStore, StoredResponse
from vlm_gateway.schemas.openai import ChatMessage
from vlm_gateway.schemas.responses import OutputMessage, OutputText, ResponseObject
from vlm_gateway.settings import SettingsError, load_settings


def test_settings_section() -> None:
    assert load_settings(environ={}).responses == ResponsesSettings()
    env = {"VLM_GATEWAY_RESPONSES__TTL_S": "60", "VLM_GATEWAY_RESPONSES__CANCEL_POLL_S": "0.1"}
    assert load_settings(environ=env).responses == ResponsesSettings(ttl_s=60, cancel_poll_s=0.1)
    with pytest.raises(SettingsError, match="responses"):
        load_settings(environ={"VLM_GATEWAY_RESPONSES__TTL_S": "0"})


OTHER = Caller("key_other", "other", rpm=0, concurrency=0, tpm=None, models=None)


async def test_values_expire_and_delete(backend) -> None:  # noqa: F811
    assert await backend.value_get("v") is None
    await backend.value_set("v", b"one", 60)
    await backend.value_set("short", b"x", 0.2)
    await backend.value_set("v", b"two", 60)
    assert await backend.value_get("v") == b"two" and await backend.value_get("short") == b"x"
    await asyncio.sleep(0.3)
    assert await backend.value_get("short") is None
    assert await backend.value_delete("v") and not await backend.value_delete("v")
    assert await backend.value_get("v") is None
    await backend.value_set("again", b"1", 0.2)
    await backend.value_set("again", b"2", 60)  # set again: the new TTL counts, not the first one
    await asyncio.sleep(0.3)
    assert await backend.value_get("again") == b"2"


def record(status: str = "completed", owner: str = "anonymous", text: str = "Hi") -> StoredResponse:
    response = ResponseObject(id=f"resp_{uuid.uuid4().hex}", created_at=0, status=status, model="m",  # type: ignore[arg-type]
                              background=status != "completed",
                              output=[OutputMessage(id="msg_1", status="completed", content=[OutputText(text)])])
    return StoredResponse(owner, response, [ChatMessage("user", "Hello")])


async def test_response_store(backend) -> None:  # noqa: F811
    store = ResponseStore(backend, ResponsesSettings())
    done = record()
    await store.save(done)
    got = await store.get(done.response.id, ANONYMOUS)
    assert got.response == done.response and got.history == done.history
    assert [(m.role, m.content) for m in (await store.previous(done.response.id, ANONYMOUS)).conversation] == [
        ("user", "Hello"), ("assistant", "Hi")]
    with pytest.raises(NotFound) as other:
        await store.get(done.response.id, OTHER)
    assert other.value.param == "response_id"
    with pytest.raises(NotFound) as missing:
        await store.previous("resp_nope", ANONYMOUS)
    assert (missing.value.param, missing.value.code) == ("previous_response_id", "previous_response_not_found")

    running = record("in_progress")
    await store.save(running)
    with pytest.raises(InvalidRequest):
        await store.previous(running.response.id, ANONYMOUS)  # not finished: nothing to continue yet
    await store.cancel(running.response.id)
    await store.save(running)  # a job writing its progress afterwards does not undo the cancellation
    assert (await store.get(running.response.id, ANONYMOUS)).response.status == "cancelled"
    deleted = await store.delete(done.response.id, ANONYMOUS)
    assert deleted.deleted and await store.find(done.response.id) is None


# --- two replicas on one Redis ----------------------------------------------------------------

@pytest.fixture
def shared_redis(prefix) -> Iterator[str]:  # noqa: F811
    """A Redis must answer (a failure under CI, else a skip); every key under ``prefix`` goes afterwards."""
    client = require_redis()
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


@contextlib.contextmanager
def replicas(checkpoint, engine, key_prefix: str, tmp_path) -> Iterator[tuple[TestClient, TestClient]]:
    s = settings(checkpoint, redis_url=TEST_REDIS_URL, limits=LimitSettings(keys=TEST_KEYS, redis_prefix=key_prefix),
                 jobs=JobSettings(concurrency=1, poll_s=0.05, key_prefix=f"{key_prefix}{{jobs}}:"),
                 files=FileSettings(dir=str(tmp_path), key_prefix=f"{key_prefix}{{files}}:"),
                 responses=ResponsesSettings(cancel_poll_s=0.02))
    with TestClient(app_for(s, engine)) as a, TestClient(app_for(s, engine)) as b:
        a.headers.update(auth())
        b.headers.update(auth())
        yield a, b


def test_two_replicas_share_stored_responses(tiny_checkpoint, engine, shared_redis, tmp_path) -> None:
    with replicas(tiny_checkpoint, engine, shared_redis, tmp_path) as (a, b):
        made = a.post("/v1/responses", json={"model": "m", "input": "My name is Ada."}).json()
        assert Response.model_validate(b.get(f"/v1/responses/{made['id']}").json()).output_text == "Hi there"
        assert b.get(f"/v1/responses/{made['id']}", headers=auth(BOB)).status_code == 404

        engine.pieces = ["Ada"]
        follow = b.post("/v1/responses", json={"model": "m", "input": "Name?", "previous_response_id": made["id"]})
        assert follow.status_code == 200 and follow.json()["output"][0]["content"][0]["text"] == "Ada"
        prompt = b.app.state.services.tokenizers["m"].decode(engine.requests[-1].token_ids)
        assert prompt.index("My name is Ada.") < prompt.index("Hi there") < prompt.index("Name?")

        engine.gate.clear()
        queued = a.post("/v1/responses", json={"model": "m", "input": "x", "background": True}).json()
        wait_for(lambda: b.get(f"/v1/responses/{queued['id']}").json()["status"] == "in_progress")
        assert b.post(f"/v1/responses/{queued['id']}/cancel").json()["status"] == "cancelled"
        wait_for(lambda: engine.aborted == 1)  # whichever replica ran it stopped it
        assert a.get(f"/v1/responses/{queued['id']}").json()["status"] == "cancelled"
        engine.gate.set()

        done = b.post("/v1/responses", json={"model": "m", "input": "y", "background": True}).json()
        final = wait_for(lambda: (r := a.get(f"/v1/responses/{done['id']}").json())["status"] == "completed" and r)
        assert final["output"][0]["content"][0]["text"] == "Ada"

        assert b.delete(f"/v1/responses/{made['id']}").status_code == 200
        assert a.get(f"/v1/responses/{made['id']}").status_code == 404
    stored = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        keys = [k.decode() for k in stored.scan_iter(match=shared_redis + "responses:*")]
        assert keys and all(stored.ttl(k) > 0 for k in keys)  # every stored response expires
    finally:
        stored.close()
