"""The Batch API through the real OpenAI Python SDK, against the gateway and its embedded vLLM engine:
upload a JSONL file (purpose "batch"), create the batch, poll it to the end, read the output file."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.e2e.conftest import EMBEDDED_FAMILY, model_id
from tests.helpers import png_data_uri

pytestmark = pytest.mark.engine

MODEL = model_id(EMBEDDED_FAMILY)
POLLS = 600  # status reads, 0.5 s apart: a bound on the wait, not a timing assertion


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def line(custom_id: str, content) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "max_tokens": 4, "temperature": 0,
                     "messages": [{"role": "user", "content": content}]}}


def test_batch_of_chat_requests(client: openai.OpenAI) -> None:
    image = [{"type": "image_url", "image_url": {"url": png_data_uri(), "detail": "low"}},
             {"type": "text", "text": "What is in this image?"}]
    lines = [line("text-1", "Say hello."), line("image-1", image), line("text-2", "Count to three.")]
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    upload = client.files.create(file=("batch.jsonl", data), purpose="batch")
    assert upload.purpose == "batch"

    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"suite": "e2e"})
    assert batch.id.startswith("batch_") and batch.status == "validating"
    assert batch.request_counts.total == 3

    for _ in range(POLLS):
        batch = client.batches.retrieve(batch.id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(0.5)
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 3, 0)
    assert batch.error_file_id is None and batch.metadata == {"suite": "e2e"}

    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines() if x.strip()]
    assert sorted(x["custom_id"] for x in out) == ["image-1", "text-1", "text-2"]
    for x in out:
        assert x["error"] is None and x["response"]["status_code"] == 200
        body = x["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["usage"]["completion_tokens"] <= 4
    by_id = {x["custom_id"]: x["response"]["body"] for x in out}
    # the image was expanded by the engine and counted apart
    image_usage = by_id["image-1"]["usage"]
    assert image_usage["prompt_tokens_details"]["image_tokens"] > 1
    assert image_usage["prompt_tokens"] > by_id["text-1"]["usage"]["prompt_tokens"]
    assert batch.usage is not None and batch.usage.output_tokens == sum(
        b["usage"]["completion_tokens"] for b in by_id.values())

    assert batch.id in [b.id for b in client.batches.list(limit=10).data]
