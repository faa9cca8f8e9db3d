"""Routes, error mapping and SSE over HTTP, with a scripted engine (narrow: no vLLM here).

The tokenizer, templates and image loader are the real ones; only the engine is replaced, so these
tests pin the HTTP contract. The end-to-end tests in tests/e2e drive real engines.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
import pytest
from litestar.testing import TestClient

from tests.helpers import png_data_uri
from vlm_gateway import seeds
from vlm_gateway.app import create_app
from vlm_gateway.engines import Candidate, EngineDelta, EngineRequest, TokenLogprob
from vlm_gateway.engines.errors import EngineError, EngineRejected
from vlm_gateway.schemas.seeds import VisionRequest
from vlm_gateway.settings import ModelSettings, Settings


class ScriptedEngine:
    """Answers every request with "Hi there" and a usage delta; records what it was sent. A test may set
    ``max_model_len`` (as reported by the engine) or ``fail`` (raised after ``fail_after`` deltas)."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready
        self.max_model_len: int | None = None
        self.fail: EngineError | None = None
        self.fail_after = 0
        self.requests: list[EngineRequest] = []
        self.script: list[str] | None = None  # the output's text pieces (default: "Hi", " there")
        self.finish = "stop"  # the scripted output's finish_reason

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def recheck(self) -> bool:
        return self.ready

    @property
    def local_ready(self) -> bool:  # (as if it ran in the gateway)
        return self.ready

    async def generate(self, request: EngineRequest):
        self.requests.append(request)
        expanded = len(request.token_ids) + 99 * len(request.images)
        if self.fail is not None and self.fail_after == 0:
            raise self.fail
        top = request.sampling.logprobs

        def lp(token: str) -> list[TokenLogprob] | None:
            if top is None:
                return None
            return [TokenLogprob(token, -0.5, list(token.encode()), [Candidate(token, -0.5), Candidate("x", -1.5),
                                                                      Candidate("y", -2.5)])]

        prompt_lp = None
        if request.sampling.prompt_logprobs is not None:
            prompt_lp = [None, *(TokenLogprob(f"t{i}", -1.0, None, [Candidate("z", -0.1)])
                                 for i in request.token_ids[1:])]
        if self.script is not None:
            *first, last = self.script
            yield EngineDelta(0, "", prompt_token_ids=list(range(expanded)))
            for piece in first:
                yield EngineDelta(0, piece)
            yield EngineDelta(0, last, finish_reason=self.finish)
            yield EngineDelta(prompt_tokens=expanded, completion_tokens=len(self.script))
            return
        yield EngineDelta(0, "Hi", prompt_token_ids=list(range(expanded)), logprobs=lp("Hi"),
                          prompt_logprobs=prompt_lp)
        if self.fail is not None:
            raise self.fail
        yield EngineDelta(0, " there", finish_reason="stop", logprobs=lp(" there"))
        yield EngineDelta(prompt_tokens=expanded, completion_tokens=2)


@pytest.fixture(scope="module")
def engines() -> dict[str, ScriptedEngine]:
    return {}


@pytest.fixture(scope="module")
def client(tiny_checkpoint, engines):
    settings = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint), aliases=["alias"]),
                                ModelSettings(id="cold", checkpoint=str(tiny_checkpoint))],
                        max_request_bytes=200_000)

    def factory(model, session):
        engines[model.id] = ScriptedEngine(ready=model.id != "cold")
        return engines[model.id]

    with TestClient(create_app(settings, engine_factory=factory)) as c:
        yield c


def chat(**extra) -> dict:
    return {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri()}}, {"type": "text", "text": "What?"}]}], **extra}


def test_chat_completion_shape_and_engine_request(client, engines) -> None:
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "m"
    assert body["choices"] == [{"index": 0, "message": {"content": "Hi there", "role": "assistant"},
                                "finish_reason": "stop", "logprobs": None}]
    sent = engines["m"].requests[-1]
    assert body["usage"]["prompt_tokens"] == len(sent.token_ids) + 99
    assert body["usage"]["prompt_tokens_details"]["image_tokens"] == 100  # placeholder + 99
    assert "prompt_token_ids" not in body
    assert len(sent.images) == 1 and sent.images[0].startswith("data:image/png;base64,")
    assert sent.sampling.max_tokens == 4


def test_prompt_cache_key_is_the_engine_affinity(client, engines) -> None:
    """Requests about different images that share a long prefix route together when the client names it."""
    sent = []
    for color, key in (((255, 0, 0), "receipts"), ((0, 255, 0), "receipts"), ((0, 0, 255), None)):
        image = {"type": "image_url", "image_url": {"url": png_data_uri(color=color)}}
        body = chat(messages=[{"role": "user", "content": [image, {"type": "text", "text": "What?"}]}])
        if key:
            body["prompt_cache_key"] = key
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        sent.append(engines["m"].requests[-1].affinity)
    assert sent[0] == sent[1] != sent[2] and sent[2].startswith("img:")
    responses = client.post("/v1/responses", json={"model": "m", "input": "What?", "max_output_tokens": 4,
                                                   "prompt_cache_key": "receipts"})
    assert responses.status_code == 200 and engines["m"].requests[-1].affinity == sent[0]


def test_alias_and_seed_prefix_routes(client) -> None:
    r = client.post("/chat/completions", json=chat(model="alias"))
    assert r.status_code == 200 and r.json()["model"] == "alias"  # the name the client asked for
    models = client.get("/models").json()
    assert {m["id"] for m in models["data"]} == {"m", "alias", "cold"} and models["object"] == "list"
    for name in ("m", "alias"):  # one card, by id or alias, as in the list (the SDK's models.retrieve)
        assert client.get(f"/v1/models/{name}").json() == next(m for m in models["data"] if m["id"] == name)
    missing = client.get("/v1/models/org/no-such")  # ids may hold slashes: the whole rest is the name
    assert missing.status_code == 404
    assert (missing.json()["error"]["code"], missing.json()["error"]["param"]) == ("model_not_found", "model")
    assert "`org/no-such`" in missing.json()["error"]["message"]


def test_stream_sse_format(client, engines) -> None:
    r = client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    assert engines["m"].requests[-1].usage_read  # the client reads the usage: the engine's own is asked for
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [msgspec.json.decode(e[6:]) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hi there"
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    client.post("/v1/chat/completions", json=chat(stream=True))
    assert not engines["m"].requests[-1].usage_read  # no usage chunk: the gateway's own count will do


@pytest.mark.parametrize("body,status,param,code", [
    (chat(model="nope"), 404, "model", "model_not_found"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content[0].image_url", None),
    ({"model": "m", "messages": "hi"}, 400, "messages", None),
    (chat(temperature=9), 400, "temperature", None),
    (chat(top_logprobs=2), 400, "top_logprobs", None),
    (chat(modalities=["text", "audio"]), 400, "modalities[1]", None),  # no model here speaks
    (chat(logit_bias={"a": 1}), 400, "logit_bias", None),
    (chat(logit_bias={"5": 500}), 400, "logit_bias", None),  # a map's value is named as the map
    (chat(seed=2**64), 400, "seed", None),  # a signed 64-bit integer, as OpenAI's and vLLM's
    (chat(n=129, temperature=1), 400, "n", None),
    (chat(stream_options={"include_usage": True}), 400, "stream_options", None),  # without stream
    (chat(functions=[{"name": "f", "parameters": {"type": "object"}}]), 400, "functions", None),
    (chat(function_call="auto"), 400, "function_call", None),
    ({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400,
     "messages[0].content[0].image_url", None),
    (chat(model="cold"), 503, None, "engine_unavailable"),
])
def test_errors_are_openai_shaped(client, body, status, param, code) -> None:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    if code:
        assert err["code"] == code


def test_prompt_that_cannot_fit_is_refused_before_the_engine(client, engines, monkeypatch) -> None:
    client.post("/v1/chat/completions", json=chat(max_tokens=4))
    sent = len(engines["m"].requests)
    prompt = len(engines["m"].requests[-1].token_ids)  # placeholders unexpanded: a lower bound
    monkeypatch.setattr(engines["m"], "max_model_len", prompt + 3)  # reported by the engine at start
    r = client.post("/v1/chat/completions", json=chat(max_tokens=4))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"], err["type"]) == ("context_length_exceeded", "messages", "invalid_request_error")
    assert err["message"].startswith(f"This model's maximum context length is {prompt + 3} tokens. However, your "
                                     f"messages resulted in {prompt + 4} tokens ({prompt} in the messages, 4 in")
    r = client.post("/v1/chat/completions", json=chat(max_tokens=4, stream=True))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert len(engines["m"].requests) == sent  # never sent
    # the lower bound fits: sent, though the image will expand past the limit (the engine's to refuse)
    assert client.post("/v1/chat/completions", json=chat(max_tokens=3)).status_code == 200


TOO_LONG = "The decoder prompt (length 700) is longer than the maximum model length of 512."


@pytest.mark.parametrize("route,body,param", [
    ("/v1/chat/completions", chat(), "messages"),
    ("/v1/chat/completions", chat(stream=True), "messages"),
    ("/v1/completions", {"model": "m", "prompt": "Hello"}, "prompt"),
])
def test_engine_rejection_is_the_callers_400(client, engines, monkeypatch, route, body, param) -> None:
    monkeypatch.setattr(engines["m"], "fail", EngineRejected(TOO_LONG, "context_length_exceeded"))
    r = client.post(route, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"], err["message"]) == ("context_length_exceeded", param, TOO_LONG)


def test_engine_rejection_mid_stream_is_an_error_event(client, engines, monkeypatch) -> None:
    monkeypatch.setattr(engines["m"], "fail", EngineRejected("bad value"))
    monkeypatch.setattr(engines["m"], "fail_after", 1)
    r = client.post("/v1/chat/completions", json=chat(stream=True))
    assert r.status_code == 200
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    err = msgspec.json.decode(events[-3][6:])["error"]
    assert (err["type"], err["code"], err["message"]) == ("invalid_request_error", "invalid_value", "bad value")


def test_null_is_the_default_as_openai_takes_it(client, engines) -> None:
    """The SDK sends ``None`` where a caller passes one (``n=None``): OpenAI reads the default."""
    r = client.post("/v1/chat/completions", json=chat(n=None, stream=None, logprobs=None, parallel_tool_calls=None))
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None
    assert engines["m"].requests[-1].sampling.n == 1
    r = client.post("/v1/completions", json={"model": "m", "prompt": "Hello", "n": None, "echo": None, "stream": None})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "Hi there"


def test_top_p_0_is_the_most_likely_token(client, engines) -> None:
    assert client.post("/v1/chat/completions", json=chat(top_p=0)).status_code == 200
    assert 0 < engines["m"].requests[-1].sampling.top_p < 1e-6  # vLLM takes no 0


def test_bodies_nested_too_deep_and_empty_bodies_are_400s(client) -> None:
    deep = (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": '
            + b"[" * 5000 + b"]" * 5000 + b"}")
    r = client.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[" * 3000 + "]" * 3000}}
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].tool_calls[0].function.arguments"
    r = client.post("/v1/chat/completions", content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "the request body is empty: send a JSON object"


def test_a_wrong_method_is_the_clients_error(client) -> None:
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_malformed_json_and_oversized_body(client) -> None:
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    big = chat()
    big["messages"][0]["content"][1]["text"] = "x" * 300_000
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_route_is_openai_404(client) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_health_shape(client) -> None:
    body = client.get("/health").json()
    assert set(body) == {"status", "timestamp", "model_loaded", "gpu_available"}
    assert datetime.fromisoformat(body["timestamp"]).year >= 2025  # ISO 8601, as the FastVLM API sends it
    assert body["model_loaded"] is False  # "cold" is not up


def test_ready_is_a_503_naming_the_models_still_loading(client) -> None:
    r = client.get("/ready")
    assert r.status_code == 503 and r.json() == {"status": "loading", "loading": ["cold"]}
    engine = client.app.state.services.engines["cold"]
    engine.ready = True
    try:
        r = client.get("/ready")
    finally:
        engine.ready = False
    assert r.status_code == 200 and r.json() == {"status": "ready", "loading": []}


def test_seed_vision_route_and_its_error_shape(client) -> None:
    ok = client.post("/vision", json={"image_url": png_data_uri(), "prompt": "What?", "model": "m"})
    assert ok.status_code == 200
    body = ok.json()
    assert body["object"] == "vision.completion" and body["choices"][0]["message"]["content"] == "Hi there"
    bad = client.post("/vision", json={"prompt": "What?", "model": "m"})
    assert bad.status_code == 400
    assert set(bad.json()) == {"error", "status_code", "timestamp"} and bad.json()["status_code"] == 400
    broken = client.post("/vision", json={"image_url": "data:image/png;base64,aGVsbG8=", "prompt": "What?"})
    assert broken.status_code == 400 and broken.json()["error"].startswith("image_url: "), broken.text


def test_seed_vision_without_a_model_uses_the_first_served(client) -> None:
    """The FastVLM service's default model ("fastvlm-1.5b") where one is named so, else the first served:
    a FastVLM client that leaves ``model`` out is answered, not a 404."""
    r = client.post("/vision", json={"image_url": png_data_uri(), "prompt": "What?"})
    assert r.status_code == 200 and r.json()["model"] == "m", r.text
    assert seeds.vision_to_chat(VisionRequest(png_data_uri(), "p"), {"fastvlm-1.5b"}, "m").model == "fastvlm-1.5b"


def test_fal_run_route(client) -> None:
    r = client.post("/run/m", json={"image_url": png_data_uri(), "prompt": "Describe"})
    assert r.status_code == 200 and r.json() == {"output": "Hi there", "partial": False}


@pytest.mark.parametrize("route,body,param", [
    ("/run/m", {"image_url": "ftp://example.com/a.png", "prompt": "Describe"}, "image_url"),
    ("/v1/image/generate", {"images": ["ftp://example.com/a.png"], "domain": "image.caption", "model": "m"},
     "images[0]"),
    ("/v1/image/generate", {"images": [png_data_uri(), png_data_uri(color=(1, 2, 3))], "domain": "image.caption",
                            "model": "m"}, "images"),  # model m takes one image
])
def test_seed_errors_name_the_seed_field(client, route, body, param) -> None:
    r = client.post(route, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    if route == "/run/m":  # queued, the stored error is the one the route would have sent
        job = client.post("/queue/m", json=body).json()
        poll(client, f"/queue/requests/{job['request_id']}/status")
        assert client.get(f"/queue/requests/{job['request_id']}").json()["error"]["param"] == param


def test_completions_with_markers(client, engines) -> None:
    r = client.post("/v1/completions", json={"model": "m", "prompt": "USER: <image>\nWhat? ASSISTANT:",
                                              "images": [png_data_uri()], "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "Hi there"
    assert len(engines["m"].requests[-1].images) == 1
    r = client.post("/v1/completions", json={"model": "m", "prompt": "no marker", "images": [png_data_uri()]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def poll(client, url: str, done=lambda r: r.json().get("status") in ("COMPLETED", "completed", "failed")) -> dict:
    import time

    for _ in range(100):
        r = client.get(url)
        if done(r):
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"{url} never finished: {r.text}")


def test_queue_job_runs_through_the_same_pipeline(client) -> None:
    r = client.post("/queue/m", json=chat())
    assert r.status_code == 200
    ids = r.json()
    assert set(ids) == {"request_id", "status_url", "response_url", "cancel_url"}
    status = poll(client, ids["status_url"].split("testserver.local")[-1])
    assert status["status"] == "COMPLETED"
    result = client.get(f"/queue/requests/{ids['request_id']}").json()
    assert result["object"] == "chat.completion" and result["choices"][0]["message"]["content"] == "Hi there"
    fal = client.post("/queue/m", json={"image_url": png_data_uri(), "prompt": "Describe"}).json()
    poll(client, f"/queue/requests/{fal['request_id']}/status")
    assert client.get(f"/queue/requests/{fal['request_id']}").json() == {"output": "Hi there", "partial": False}


def test_vlmrun_sync_and_batch(client) -> None:
    body = {"images": [png_data_uri()], "domain": "image.caption", "model": "m"}
    sync = client.post("/v1/image/generate", json=body).json()
    assert sync["status"] == "completed" and sync["usage"] == {"elements_processed": 1, "credits_used": 1,
                                                              "element_type": "image"}
    assert sync["response"] == "Hi there"  # the scripted engine does not speak JSON
    pending = client.post("/v1/image/generate", json={**body, "batch": True}).json()
    assert pending["status"] == "pending"
    done = poll(client, f"/v1/image/generate/{pending['id']}")
    assert done["status"] == "completed" and done["id"] == pending["id"]
    bad = client.post("/v1/image/generate", json={**body, "domain": "no.such"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "domain"


def test_chat_logprobs_in_openai_shape(client) -> None:
    r = client.post("/v1/chat/completions", json=chat(logprobs=True, top_logprobs=2)).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["Hi", " there"]
    assert content[0] == {"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                          "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": None},
                                           {"token": "x", "logprob": -1.5, "bytes": None}]}
    plain = client.post("/v1/chat/completions", json=chat(logprobs=True)).json()
    assert plain["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []
    assert client.post("/v1/chat/completions", json=chat()).json()["choices"][0]["logprobs"] is None


def test_chat_logprobs_streamed(client) -> None:
    with client.stream("POST", "/v1/chat/completions", json=chat(logprobs=True, top_logprobs=1, stream=True)) as r:
        chunks = [msgspec.json.decode(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    tokens = [c["token"] for chunk in chunks for choice in chunk["choices"] if choice.get("logprobs")
              for c in choice["logprobs"]["content"]]
    assert tokens == ["Hi", " there"]


def completion(**extra) -> dict:
    return {"model": "m", "prompt": "Hello", "max_tokens": 4, **extra}


def test_completions_every_prompt_form(client, engines) -> None:
    r = client.post("/v1/completions", json=completion(prompt=["one", "two"], n=2)).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    # the scripted engine answers choice 0 of each request: prompt k's choices are k * n + i
    assert [c["text"] for c in r["choices"]] == ["Hi there", "", "Hi there", ""]
    sent = engines["m"].requests[-2:]
    assert len({tuple(q.token_ids) for q in sent}) == 2  # one engine request per prompt
    assert r["usage"]["prompt_tokens"] == sum(len(q.token_ids) for q in sent)
    assert r["usage"]["completion_tokens"] == 4
    r = client.post("/v1/completions", json=completion(prompt=[5, 6, 7]))
    assert r.status_code == 200 and engines["m"].requests[-1].token_ids == [5, 6, 7]
    r = client.post("/v1/completions", json=completion(prompt=[[5, 6], [7]])).json()
    assert len(r["choices"]) == 2 and engines["m"].requests[-1].token_ids in ([5, 6], [7])


@pytest.mark.parametrize("prompt,param", [
    (["a", 1], "prompt"), ([10**9], "prompt"), ([[1], []], "prompt[1]"), ([], "prompt"), ([-1], "prompt[0]"),
    (["a"] * 200, "prompt"),
])
def test_completions_bad_prompts_name_the_prompt(client, prompt, param) -> None:
    r = client.post("/v1/completions", json=completion(prompt=prompt))
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_completions_images_need_one_string_prompt(client) -> None:
    r = client.post("/v1/completions", json=completion(prompt=["<image> a", "<image> b"], images=[png_data_uri()]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "images"


def test_completions_echo_and_logprobs(client) -> None:
    r = client.post("/v1/completions", json=completion(echo=True)).json()
    assert r["choices"][0]["text"] == "HelloHi there"
    r = client.post("/v1/completions", json=completion(logprobs=1)).json()
    lp = r["choices"][0]["logprobs"]
    assert lp == {"tokens": ["Hi", " there"], "token_logprobs": [-0.5, -0.5],
                  "top_logprobs": [{"Hi": -0.5}, {" there": -0.5}], "text_offset": [0, 2]}
    r = client.post("/v1/completions", json=completion(echo=True, logprobs=0, prompt=[5, 6, 7])).json()
    lp = r["choices"][0]["logprobs"]
    assert lp["token_logprobs"][:3] == [None, -1.0, -1.0] and lp["tokens"][1:3] == ["t6", "t7"]
    assert lp["top_logprobs"][0] is None and lp["top_logprobs"][1] == {"t6": -1.0}  # the token itself, always
    assert lp["tokens"][3:] == ["Hi", " there"]
    assert lp["text_offset"] == [0, len(lp["tokens"][0]), len(lp["tokens"][0]) + 2, len(lp["tokens"][0]) + 4,
                                 len(lp["tokens"][0]) + 6]


def test_completions_return_token_ids_goes_with_one_prompt(client) -> None:
    r = client.post("/v1/completions", json=completion(prompt=["a", "b c d e"], return_token_ids=True))
    assert r.status_code == 400 and r.json()["error"]["param"] == "return_token_ids"
    r = client.post("/v1/completions", json=completion(prompt=[5, 6, 7], return_token_ids=True))
    assert r.status_code == 200 and r.json()["prompt_token_ids"][:3] == [0, 1, 2]  # (the scripted engine's ids)


@pytest.mark.parametrize("stream", [False, True])
def test_completions_echo_with_max_tokens_0_scores_the_prompt(client, stream) -> None:
    """OpenAI's way to score a prompt: its text and logprobs, nothing generated (vLLM makes one token,
    which is not shown or counted)."""
    body = completion(echo=True, logprobs=0, prompt=[5, 6, 7], max_tokens=0, stream=stream,
                      stream_options={"include_usage": True} if stream else None)
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    if stream:
        chunks = [msgspec.json.decode(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        choices = [c for chunk in chunks for c in chunk["choices"]]
        text = "".join(c["text"] for c in choices)
        tokens = [t for c in choices if c["logprobs"] for t in c["logprobs"]["tokens"]]
        usage = chunks[-1]["usage"]
    else:
        reply = r.json()
        text, tokens, usage = (reply["choices"][0]["text"], reply["choices"][0]["logprobs"]["tokens"],
                               reply["usage"])
    assert tokens[1:] == ["t6", "t7"] and len(tokens) == 3  # the prompt's only
    assert usage["completion_tokens"] == 0 and usage["total_tokens"] == usage["prompt_tokens"]
    generated = client.post("/v1/completions", json=completion(echo=True, prompt=[5, 6, 7])).json()
    assert text + "Hi there" == generated["choices"][0]["text"]  # the prompt alone
    err = client.post("/v1/completions", json=completion(max_tokens=0)).json()["error"]
    assert err["param"] == "max_tokens"


def test_completions_stream_echo_and_logprobs(client) -> None:
    body = completion(echo=True, logprobs=2, stream=True, prompt=["a", "b"])
    with client.stream("POST", "/v1/completions", json=body) as r:
        chunks = [msgspec.json.decode(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    texts: dict[int, str] = {}
    tokens: dict[int, list] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            tokens.setdefault(c["index"], []).extend(c["logprobs"]["tokens"])
    assert texts == {0: "aHi there", 1: "bHi there"}
    assert all(t[-2:] == ["Hi", " there"] for t in tokens.values())


def test_images_by_file_id_in_image_url_and_file_parts(client, engines) -> None:
    from tests.helpers import png_bytes

    up = client.post("/v1/files", files={"file": ("red.png", png_bytes(), "image/png")}, data={"purpose": "vision"})
    assert up.status_code == 200, up.text
    file_id = up.json()["id"]
    for part in ({"type": "image_url", "image_url": {"file_id": file_id, "detail": "low"}},
                 {"type": "file", "file": {"file_id": file_id}}):
        body = chat(messages=[{"role": "user", "content": [part, {"type": "text", "text": "What?"}]}])
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert engines["m"].requests[-1].images[0].startswith("data:image/png;base64,")
    missing = chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"file_id": "file-" + "x" * 24}}]}])
    r = client.post("/v1/chat/completions", json=missing)
    assert r.status_code == 404 and r.json()["error"]["param"] == "messages[0].content[0].image_url", r.text
    neither = chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}])
    r = client.post("/v1/chat/completions", json=neither)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[0].image_url", r.text


TOOLS = [{"type": "function", "function": {"name": "get_color", "description": "The picture's main color.",
                                           "parameters": {"type": "object", "properties": {
                                               "color": {"type": "string", "enum": ["red", "green"]}},
                                               "required": ["color"]}}}]
CALL = '<tool_call>\n{"name": "get_color", "arguments": {"color": "red"}}\n</tool_call>'


@pytest.fixture
def scripted(engines):
    def use(*pieces: str) -> None:
        engines["m"].script = list(pieces)

    yield use
    engines["m"].script, engines["m"].finish = None, "stop"


def test_tool_call_parsed_from_the_family_syntax(client, engines, scripted) -> None:
    scripted(CALL[:9], CALL[9:30], CALL[30:])
    r = client.post("/v1/chat/completions", json=chat(tools=TOOLS)).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_color", "arguments": '{"color":"red"}'}
    assert engines["m"].requests[-1].sampling.structured_outputs is None  # auto: nothing forced


def test_tool_call_streamed_as_openai_deltas(client, scripted) -> None:
    scripted("Let me look. ", CALL[:15], CALL[15:40], CALL[40:])
    with client.stream("POST", "/v1/chat/completions", json=chat(tools=TOOLS, stream=True)) as r:
        chunks = [msgspec.json.decode(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Let me look."  # whitespace before a call is dropped
    pieces = [t for d in deltas for t in d.get("tool_calls", [])]
    assert pieces[0]["id"].startswith("call_") and pieces[0]["function"]["name"] == "get_color"
    assert "".join(p["function"].get("arguments", "") for p in pieces) == '{"color":"red"}'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    # one piece per chunk, as OpenAI streams them: accumulators that read one piece per chunk (LlamaIndex,
    # openai 1.x's stream helper) lost a call's arguments when its two pieces came in one chunk
    assert all(len(d.get("tool_calls", [])) <= 1 for d in deltas)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_color"}}])
def test_a_forced_call_streams_one_piece_per_chunk(client, scripted, choice) -> None:
    scripted('[{"name": "get_color", ' if choice == "required" else '{"color": ',
             '"parameters": {"color": "green"}}]' if choice == "required" else '"green"}')
    with client.stream("POST", "/v1/chat/completions",
                       json=chat(tools=TOOLS, tool_choice=choice, stream=True)) as r:
        chunks = [msgspec.json.decode(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    pieces = [t for d in deltas for t in d.get("tool_calls", [])]
    assert all(len(d.get("tool_calls", [])) <= 1 for d in deltas) and len(pieces) == 2
    assert pieces[0]["function"] == {"name": "get_color", "arguments": ""} and pieces[0]["id"].startswith("call_")
    assert pieces[1] == {"index": 0, "function": {"arguments": '{"color":"green"}'}}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


def test_a_forced_call_wins_over_response_format(client, engines, scripted) -> None:
    """Agents (OpenAI's own SDK) send their output's response_format on every turn, a forced tool choice
    too: this turn is a call, so the call's grammar is the one sent (a 400 made forcing a tool impossible)."""
    scripted('{"color": ', '"red"}')
    named = {"type": "function", "function": {"name": "get_color"}}
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object", "properties": {
        "ok": {"type": "boolean"}}}}}
    r = client.post("/v1/chat/completions", json=chat(tools=TOOLS, tool_choice=named, response_format=fmt))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"color":"red"}'
    assert engines["m"].requests[-1].sampling.structured_outputs["json"] == TOOLS[0]["function"]["parameters"]


def test_forced_tool_choice_is_structured_output(client, engines, scripted) -> None:
    scripted('[{"name": "get_color", ', '"parameters": {"color": "green"}}]')
    r = client.post("/v1/chat/completions", json=chat(tools=TOOLS, tool_choice="required")).json()
    assert r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"color":"green"}'
    forced = engines["m"].requests[-1].sampling.structured_outputs["json"]
    assert forced["type"] == "array" and forced["minItems"] == 1
    scripted('{"color": ', '"red"}')
    named = {"type": "function", "function": {"name": "get_color"}}
    r = client.post("/v1/chat/completions", json=chat(tools=TOOLS, tool_choice=named)).json()
    assert r["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "get_color",
                                                                      "arguments": '{"color":"red"}'}
    assert engines["m"].requests[-1].sampling.structured_outputs["json"] == TOOLS[0]["function"]["parameters"]


def test_a_forced_call_cut_by_the_token_limit_is_still_the_call(client, engines, scripted) -> None:
    """As OpenAI and vLLM answer: the call with its arguments as far as they got, ``finish_reason: length``
    (LangChain then reports an invalid tool call, not a silent empty answer), whole, streamed and in
    the Responses API."""
    scripted('{"color": ', '"gr')
    engines["m"].finish = "length"
    named = {"type": "function", "function": {"name": "get_color"}}
    choice = client.post("/v1/chat/completions", json=chat(tools=TOOLS, tool_choice=named)).json()["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_color", "arguments": '{"color": "gr'}
    with client.stream("POST", "/v1/chat/completions", json=chat(tools=TOOLS, tool_choice=named, stream=True)) as r:
        chunks = [msgspec.json.decode(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    pieces = [t for c in chunks if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls", [])]
    assert "".join(p["function"].get("arguments", "") for p in pieces) == '{"color": "gr'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    response = client.post("/v1/responses", json={
        "model": "m", "input": "Color?", "tool_choice": {"type": "function", "name": "get_color"},
        "tools": [{"type": "function", **TOOLS[0]["function"]}]}).json()
    assert response["status"] == "incomplete"
    assert [(o["type"], o["arguments"], o["status"]) for o in response["output"]] == [
        ("function_call", '{"color": "gr', "incomplete")]
    scripted('[{"name": "get_', 'co')  # required: no call to name yet; text
    choice = client.post("/v1/chat/completions", json=chat(tools=TOOLS, tool_choice="required")).json()["choices"][0]
    assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]
    # required: the whole calls, then the one cut (its name whole), never text (the whole calls were lost)
    scripted('[{"name": "get_color", "parameters": {"color": "red"}}, ', '{"name": "get_color", "parameters": {"co')
    for stream in (False, True):
        with client.stream("POST", "/v1/chat/completions",
                           json=chat(tools=TOOLS, tool_choice="required", stream=stream)) as r:
            body = b"".join(r.iter_bytes())
        if stream:
            deltas = [msgspec.json.decode(line[6:])["choices"] for line in body.split(b"\n\n")
                      if line.startswith(b"data: {")]
            pieces = [t for d in deltas if d for t in d[0]["delta"].get("tool_calls", [])]
            calls = {}
            for p in pieces:
                calls[p["index"]] = calls.get(p["index"], "") + p["function"].get("arguments", "")
            assert [d[0]["finish_reason"] for d in deltas if d][-1] == "length"
            assert calls == {0: '{"color":"red"}', 1: '{"co'}
        else:
            choice = msgspec.json.decode(body)["choices"][0]
            assert choice["finish_reason"] == "length" and choice["message"]["content"] is None
            assert [c["function"]["arguments"] for c in choice["message"]["tool_calls"]] == ['{"color":"red"}', '{"co']


def test_malformed_call_stays_text(client, scripted) -> None:
    scripted("<tool_call>{not json", "</tool_call>")
    r = client.post("/v1/chat/completions", json=chat(tools=TOOLS)).json()
    assert r["choices"][0]["message"]["content"] == "<tool_call>{not json</tool_call>"
    assert r["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in r["choices"][0]["message"]


@pytest.mark.parametrize("extra,param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS * 2}, "tools[1].function.name"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_color", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
])
def test_tool_mistakes_are_400s_naming_the_field(client, extra, param) -> None:
    r = client.post("/v1/chat/completions", json=chat(**extra))
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_tool_result_with_an_image_reaches_the_engine(client, engines) -> None:
    messages = [{"role": "user", "content": "Take a screenshot."},
                {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "get_color", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": [
                    {"type": "text", "text": "here"}, {"type": "image_url", "image_url": {"url": png_data_uri()}}]}]
    r = client.post("/v1/chat/completions", json=chat(tools=TOOLS, messages=messages))
    assert r.status_code == 200, r.text
    assert len(engines["m"].requests[-1].images) == 1


SCHEMA_REFUSED = "Failed to transform json schema into a grammar: Unsupported type \"bogus\""


@pytest.mark.parametrize("extra,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "response_format"),
    ({"tools": TOOLS, "tool_choice": "required"}, "tools"),  # the call's schema is made of the tools'
    ({}, None),  # no structured output: the engine's words name nothing of the client's
])
def test_a_schema_the_engine_refuses_names_the_field_it_came_from(client, engines, monkeypatch, extra,
                                                                    param) -> None:
    monkeypatch.setattr(engines["m"], "fail", EngineRejected(SCHEMA_REFUSED))
    err = client.post("/v1/chat/completions", json=chat(**extra)).json()["error"]
    assert (err["param"], err["message"]) == (param, SCHEMA_REFUSED)
    if extra:
        monkeypatch.setattr(engines["m"], "fail", EngineRejected("bad value"))
        assert client.post("/v1/chat/completions", json=chat(**extra)).json()["error"]["param"] is None
