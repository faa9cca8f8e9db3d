"""/v1/batches over HTTP with a scripted engine, on the memory backends and on Redis: a batch runs to
completion through the real pipeline, failed lines land in the error file, bad input files are refused
naming the line, batches are per key, cancel stops what has not started, and the list pages."""

from __future__ import annotations

import json
import time

import msgspec
import openai
import pytest
from litestar.testing import TestClient

from tests.gateway.batches.conftest import chat_line, content, create, jsonl, settings, upload, wait_status
from tests.helpers import ALICE, BOB, auth, png_data_uri
from vlm_gateway.app import create_app

ENDED = ("completed", "failed", "expired", "cancelled")


def error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_batch_runs_to_completion(client, engine) -> None:
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri()}},
                                         {"type": "text", "text": "What?"}]}
    lines = [chat_line("first"), chat_line("second", messages=[image]), chat_line("third", "Bye?")]
    engine.cached = 4  # each line's prompt had 4 tokens in the prefix cache
    file_id = upload(client, lines)
    r = create(client, file_id, metadata={"job": "nightly"})
    assert r.status_code == 200, r.text
    made = r.json()
    assert made["id"].startswith("batch_") and made["object"] == "batch"
    assert (made["status"], made["endpoint"], made["input_file_id"], made["completion_window"]) == (
        "validating", "/v1/chat/completions", file_id, "24h")
    assert made["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert made["metadata"] == {"job": "nightly"} and made["expires_at"] == made["created_at"] + 86400

    done = wait_status(client, made["id"], ENDED)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert done["error_file_id"] is None and done["errors"] is None
    assert done["in_progress_at"] and done["finalizing_at"] and done["completed_at"]
    out = content(client, done["output_file_id"])
    assert [line["custom_id"] for line in out] == ["first", "second", "third"]
    for line in out:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "Hi there"
    assert len(engine.requests) == 3 and sum(len(r.images) for r in engine.requests) == 1  # the pipeline ran
    prompt = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in out)
    assert done["usage"]["input_tokens"] == prompt and done["usage"]["output_tokens"] == 6
    assert done["usage"]["input_tokens_details"]["cached_tokens"] == 12

    meta = client.get(f"/v1/files/{done['output_file_id']}").json()
    assert (meta["purpose"], meta["filename"]) == ("batch_output", f"{made['id']}_output.jsonl")
    assert client.get(f"/v1/files/{done['output_file_id']}", headers=auth(BOB)).status_code == 404


def test_a_full_file_quota_keeps_the_results_of_a_batch_that_ran(tiny_checkpoint, engine, tmp_path) -> None:
    """The lines ran and were paid for: their output is stored even past the key's file quota (and the
    key's next upload waits for room), not thrown away with a failed batch."""
    s = settings(tiny_checkpoint, str(tmp_path), "memory", "unused:")
    s = msgspec.structs.replace(s, files=msgspec.structs.replace(s.files, key_quota_bytes=1500))
    with TestClient(create_app(s, engine_factory=lambda model, session: engine)) as quota_client:
        quota_client.headers.update(auth(ALICE))
        lines = [chat_line(f"line-{i}") for i in range(6)]
        batch = create(quota_client, upload(quota_client, lines)).json()
        done = wait_status(quota_client, batch["id"], ENDED)
        assert done["status"] == "completed" and done["errors"] is None, done
        out = content(quota_client, done["output_file_id"])
        assert [line["custom_id"] for line in out] == [f"line-{i}" for i in range(6)]
        r = quota_client.post("/v1/files", files={"file": ("x.jsonl", b"{}\n", "application/jsonl")},
                              data={"purpose": "batch"}, headers=auth(ALICE))
        assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded"


def test_failed_line_lands_in_the_error_file(client) -> None:
    refused = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/a.png"}},
                                           {"type": "text", "text": "What?"}]}
    file_id = upload(client, [chat_line("ok"), chat_line("bad", messages=[refused])])
    done = wait_status(client, create(client, file_id).json()["id"], ENDED)
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    assert [line["custom_id"] for line in content(client, done["output_file_id"])] == ["ok"]
    [failed] = content(client, done["error_file_id"])
    assert failed["custom_id"] == "bad" and failed["error"] is None
    assert failed["response"]["status_code"] == 400
    err = failed["response"]["body"]["error"]
    assert err["type"] == "invalid_request_error" and err["param"].startswith("messages[0].content[0]")


def test_responses_endpoint(client) -> None:
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/responses",
            "body": {"model": "m", "input": "Hello", "max_output_tokens": 8}}
    done = wait_status(client, create(client, upload(client, [line]), "/v1/responses").json()["id"], ENDED)
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 1
    [out] = content(client, done["output_file_id"])
    body = out["response"]["body"]
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "Hi there"
    assert client.get(f"/v1/responses/{body['id']}").json()["id"] == body["id"]  # stored, as the route does


@pytest.mark.parametrize("line,number,needle", [
    (b"{not json", 2, "not a valid request line"),
    (chat_line("a"), 2, "custom_id 'a' is used already (on line 1)"),
    ({**chat_line("x"), "method": "GET"}, 2, 'method must be "POST"'),
    ({**chat_line("x"), "url": "/v1/responses"}, 2, "is not the batch's endpoint"),
    ({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}, 2,
     "body: Object missing required field `messages`"),
    ({**chat_line("x"), "body": "text"}, 2, "body: Expected `object`"),
    (chat_line("x", stream=True), 2, "body.stream"),
    ({**chat_line("x"), "body": {**chat_line("x")["body"], "model": "nope"}}, 2, "The model `nope` does not exist"),
    ({"method": "POST", "url": "/v1/chat/completions", "body": {}}, 2, "custom_id"),
])
def test_bad_input_is_a_400_naming_the_line(client, line, number, needle) -> None:
    file_id = upload(client, [chat_line("a"), line, chat_line("c")])
    body = error(create(client, file_id), 400)
    assert body["param"] == "input_file_id"
    assert body["message"].startswith(f"line {number} of the input file: ") and needle in body["message"], body


def test_create_is_checked(client) -> None:
    vision = client.post("/v1/files", files={"file": ("a.jsonl", b'{"a": 1}\n')}, data={"purpose": "user_data"})
    assert "purpose 'batch'" in error(create(client, vision.json()["id"]), 400)["message"]
    assert error(create(client, "file-" + "x" * 24), 404)["param"] == "input_file_id"
    file_id = upload(client, [chat_line("a")])
    assert error(create(client, file_id, endpoint="/v1/embeddings"), 400)["param"] == "endpoint"
    r = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                         "completion_window": "1h"})
    assert error(r, 400)["param"] == "completion_window"
    r = client.post("/v1/batches", json={"endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert error(r, 400)["param"] == "input_file_id"
    assert error(create(client, file_id, metadata={str(i): "v" for i in range(17)}), 400)["param"] == "metadata"
    r = client.post("/v1/files", files={"file": ("e.jsonl", b"\n\n")}, data={"purpose": "batch"})
    assert error(create(client, r.json()["id"]), 400)["code"] == "empty_file"


def test_another_key_cannot_see_the_batch(client) -> None:
    batch = create(client, upload(client, [chat_line("a")])).json()
    for method, path in (("GET", ""), ("POST", "/cancel")):
        body = error(client.request(method, f"/v1/batches/{batch['id']}{path}", headers=auth(BOB)), 404)
        assert body["param"] == "batch_id"
    assert client.get("/v1/batches", headers=auth(BOB)).json()["data"] == []
    assert error(create(client, batch["input_file_id"], secret=BOB), 404)["param"] == "input_file_id"
    assert client.get("/v1/batches/batch_nope").status_code == 404
    assert client.get("/v1/batches", headers=auth("vlm-wrong")).status_code == 401
    wait_status(client, batch["id"], ENDED)


def held_at_its_first_line(client, engine, lines: int) -> tuple[str, dict]:
    """A batch of ``lines`` lines (l0, l1, ...) whose first line has reached the engine and is held there
    (``engine.gate``), the others queued behind it: its input file's id and the batch."""
    engine.gate.clear()
    file_id = upload(client, [chat_line(f"l{i}") for i in range(lines)])
    batch = create(client, file_id).json()
    for _ in range(500):
        if engine.requests:
            break
        time.sleep(0.02)
    return file_id, batch


def test_cancel_stops_lines_not_started(client, engine, receiver) -> None:
    _, batch = held_at_its_first_line(client, engine, 4)
    assert len(engine.requests) == 1
    r = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelling" and r.json()["cancelling_at"]
    assert client.post(f"/v1/batches/{batch['id']}/cancel").json()["status"] == "cancelling"  # idempotent
    engine.gate.set()
    done = wait_status(client, batch["id"], ENDED)
    assert done["status"] == "cancelled" and done["cancelled_at"], done
    assert done["request_counts"] == {"total": 4, "completed": 1, "failed": 0}
    assert [line["custom_id"] for line in content(client, done["output_file_id"])] == ["l0"]
    skipped = content(client, done["error_file_id"])
    assert [line["custom_id"] for line in skipped] == ["l1", "l2", "l3"]
    assert all(line["error"]["code"] == "batch_cancelled" and line["response"] is None for line in skipped)
    assert len(engine.requests) == 1  # no line started after the cancel
    assert client.post(f"/v1/batches/{batch['id']}/cancel").json()["status"] == "cancelled"
    assert [event.type for event in receiver.events(batch["id"])] == ["batch.cancelled"]


def test_deleting_the_input_file_of_a_running_batch_changes_nothing(client, engine) -> None:
    """The batch keeps its input (a pin on the same bytes, no key's file) until it ends: OpenAI lets a
    client delete its files, and a batch that re-read a deleted input failed, its finished lines lost."""
    file_id, batch = held_at_its_first_line(client, engine, 3)
    assert client.delete(f"/v1/files/{file_id}").status_code == 200
    backend = client.app.state.batches.files.backend
    pin = client.blocking_portal.call(client.app.state.batches.store.get, batch["id"]).input_pin
    assert pin and client.blocking_portal.call(backend.get, pin) is not None
    assert pin not in [f["id"] for f in client.get("/v1/files", params={"limit": 10000}).json()["data"]]
    engine.gate.set()
    done = wait_status(client, batch["id"], ENDED)
    assert done["status"] == "completed" and done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert [line["custom_id"] for line in content(client, done["output_file_id"])] == ["l0", "l1", "l2"]
    assert client.blocking_portal.call(backend.get, pin) is None  # let go of when the batch ended


def test_a_batch_that_ends_sends_one_signed_event(client, receiver) -> None:
    """As OpenAI's batch webhooks: ``batch.completed`` / ``batch.cancelled`` with the batch's id, signed
    (Standard Webhooks: the SDK's ``webhooks.unwrap`` verifies it), once per batch."""
    done = wait_status(client, create(client, upload(client, [chat_line("a")])).json()["id"], ENDED)
    event, = receiver.events(done["id"])
    assert (event.type, event.object, event.data.id) == ("batch.completed", "event", done["id"])
    assert event.id.startswith("evt_") and event.created_at >= done["completed_at"]
    # the event is a job of its own (its id the event's): its webhook is persisted and retried as every
    # job's, so a replica that stops does not lose it
    job = client.blocking_portal.call(client.app.state.jobs.queue.status, event.id)
    assert (job.kind, job.state) == ("batch_event", "done")


def test_a_finished_batch_cannot_be_cancelled(client) -> None:
    done = wait_status(client, create(client, upload(client, [chat_line("a")])).json()["id"], ENDED)
    r = client.post(f"/v1/batches/{done['id']}/cancel")
    assert r.status_code == 400 and "completed" in r.json()["error"]["message"]


def test_list_pages_newest_first(client) -> None:
    file_id = upload(client, [chat_line("a")], secret=BOB)
    ids = [create(client, file_id, secret=BOB).json()["id"] for _ in range(3)]
    first = client.get("/v1/batches", params={"limit": 2}, headers=auth(BOB)).json()
    assert first["object"] == "list" and [b["id"] for b in first["data"]] == ids[:0:-1]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[2], ids[1], True)
    rest = client.get("/v1/batches", params={"limit": 2, "after": first["last_id"]}, headers=auth(BOB)).json()
    assert [b["id"] for b in rest["data"]] == ids[:1] and rest["has_more"] is False
    assert error(client.get("/v1/batches", params={"limit": 0}, headers=auth(BOB)), 400)["param"] == "limit"
    assert error(client.get("/v1/batches", params={"after": "batch_nope"}, headers=auth(BOB)), 404)["param"] == "after"
    for batch_id in ids:
        assert wait_status(client, batch_id, ENDED, BOB)["status"] == "completed"


def test_openapi_documents_the_typed_body(client) -> None:
    doc = client.get("/schema/openapi.json").json()
    post = doc["paths"]["/v1/batches"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/BatchCreate")
    assert "Batch" in doc["components"]["schemas"] and "BatchList" in doc["components"]["schemas"]


def test_openai_sdk(sdk_url) -> None:
    alice = openai.OpenAI(base_url=sdk_url, api_key=ALICE, max_retries=0)
    lines = [chat_line("x"), chat_line("y")]
    made = alice.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    assert made.purpose == "batch"
    batch = alice.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "validating"
    for _ in range(1500):
        batch = alice.batches.retrieve(batch.id)
        if batch.status in ENDED:
            break
        time.sleep(0.02)
    assert batch.status == "completed" and batch.request_counts.completed == 2
    out = [json.loads(line) for line in alice.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in out) == ["x", "y"]
    assert [b.id for b in alice.batches.list()][0] == batch.id
    with pytest.raises(openai.BadRequestError):
        alice.batches.cancel(batch.id)
