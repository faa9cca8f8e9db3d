"""The seeds' own APIs, as documented, through the real engine; and structured output."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import pytest

from tests.e2e.conftest import EMBEDDED_FAMILY, model_id
from tests.helpers import png_data_uri

pytestmark = pytest.mark.engine
QWEN = model_id(EMBEDDED_FAMILY)
SCHEMA = {"type": "object", "properties": {
    "label": {"type": "string", "enum": ["cat", "dog", "car"]},
    "count": {"type": "integer", "minimum": 0, "maximum": 9},
    "ok": {"type": "boolean"}}, "required": ["label", "count", "ok"], "additionalProperties": False}


def test_chat_json_schema_output_validates(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={
        "model": QWEN, "max_tokens": 64, "temperature": 1.0, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_uri()}}, {"type": "text", "text": "Classify."}]}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}})
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["message"]["content"]), SCHEMA)


def test_fastvlm_vision_route(http: httpx.Client) -> None:
    r = http.post("/vision", json={"image_url": png_data_uri(), "prompt": "What is in this image?",
                                   "model": "fastvlm-1.5b", "max_tokens": 8, "temperature": 0.7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "vision.completion" and body["model"] == "fastvlm-1.5b"
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert set(body["choices"][0]) == {"index", "message", "finish_reason"}
    assert body["usage"]["prompt_tokens"] > 4
    bad = http.post("/vision", json={"image_url": "data:image/png;base64,AAAA", "prompt": "x", "model": "fastvlm-1.5b"})
    assert bad.status_code == 400 and set(bad.json()) == {"error", "status_code", "timestamp"}
    missing = http.post("/vision", json={"image_url": png_data_uri(), "prompt": "x", "model": "nope"})
    assert missing.status_code == 404 and missing.json()["status_code"] == 404


def test_fal_run_and_queue(http: httpx.Client) -> None:
    body = {"image_url": png_data_uri(), "prompt": "Describe.", "max_tokens": 6, "temperature": 0.2, "top_p": 1}
    r = http.post(f"/run/{QWEN}", json=body)
    assert r.status_code == 200 and set(r.json()) == {"output", "partial"} and r.json()["partial"] is False
    job = http.post(f"/queue/{QWEN}", json=body).json()
    for _ in range(200):
        if http.get(f"/queue/requests/{job['request_id']}/status").json()["status"] == "COMPLETED":
            break
        time.sleep(0.1)
    assert set(http.get(f"/queue/requests/{job['request_id']}").json()) == {"output", "partial"}


def test_vlmrun_generate_sync_batch_and_errors(http: httpx.Client) -> None:
    body = {"images": [png_data_uri()], "domain": "retail.product-catalog", "model": QWEN,
            "config": {"json_schema": SCHEMA, "max_tokens": 64, "detail": "low"}, "metadata": {"sku": "42"}}
    r = http.post("/v1/image/generate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "completed" and out["metadata"] == {"sku": "42"}
    jsonschema.validate(out["response"], SCHEMA)
    assert out["usage"] == {"elements_processed": 1, "element_type": "image", "credits_used": 1}
    pending = http.post("/v1/image/generate", json={**body, "batch": True}).json()
    assert pending["status"] == "pending"
    for _ in range(200):
        got = http.get(f"/v1/image/generate/{pending['id']}").json()
        if got["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert got["status"] == "completed" and got["id"] == pending["id"]
    jsonschema.validate(got["response"], SCHEMA)
    assert http.post("/v1/image/generate", json={**body, "domain": "nope", "config": {}}).status_code == 400
    assert http.get("/v1/image/generate/no-such-id").status_code == 404
