"""vlm.run domain presets (vlm_gateway/seeds/domains.toml): every vlm.run domain name is there with a prompt
and a valid JSON Schema; video domains are a clear 400 naming ``domain``, over HTTP too."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from litestar.testing import TestClient

from tests.helpers import png_data_uri
from vlm_gateway import seeds
from vlm_gateway.api.docs import walk
from vlm_gateway.app import create_app
from vlm_gateway.engines import EngineDelta, EngineRequest
from vlm_gateway.errors import InvalidRequest
from vlm_gateway.schemas.seeds import VlmRunConfig, VlmRunRequest
from vlm_gateway.settings import ModelSettings, Settings

# The `domain` enum of POST /v1/image/generate as documented at
# https://docs.vlm.run/api-reference/v1/post-image-generate, in the version whose request has `images`,
# `config` and `batch` (the shape vlm_gateway/schemas/seeds.py serves), in its order:
VLMRUN_IMAGE_GENERATE_DOMAINS = [
    "aerospace.remote-sensing",
    "document.ocr",
    "document.generative",
    "document.invoice",
    "document.markdown",
    "document.presentation",
    "document.receipt",
    "document.resume",
    "document.utility-bill",
    "image.caption",
    "retail.product-catalog",
    "retail.ecommerce-product-caption",
    "video.tv-news",
    "video.caption",
    "video.commentary",
]
# Names other versions of that same page list for the same request shape: image.tv-news (in place of
# video.tv-news), experimental.image.object-detection / experimental.image.person-detection, and later
# image.object-detection / image.person-detection.
VLMRUN_LATER_DOMAINS = [
    "image.tv-news",
    "experimental.image.object-detection",
    "experimental.image.person-detection",
    "image.object-detection",
    "image.person-detection",
]
VIDEO_DOMAINS = ["video.tv-news", "video.caption", "video.commentary"]
ALL = VLMRUN_IMAGE_GENERATE_DOMAINS + VLMRUN_LATER_DOMAINS


def test_every_vlmrun_domain_has_a_preset_and_nothing_else() -> None:
    assert len(VLMRUN_IMAGE_GENERATE_DOMAINS) == len(set(VLMRUN_IMAGE_GENERATE_DOMAINS)) == 15
    assert sorted(seeds.domains()) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_preset_prompt_and_schema(name: str) -> None:
    preset = seeds.domains()[name]
    assert preset.prompt.strip()
    schema = json.loads(preset.schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema["properties"]
    for sub in walk(schema):
        assert "format" not in sub  # not every structured decoder takes it
        if "properties" in sub and isinstance(sub["properties"], dict) and sub.get("type") == "object":
            assert sub["additionalProperties"] is False
            assert set(sub.get("required", [])) <= set(sub["properties"])
    # An answer with only the required fields (strings, numbers, ...) is accepted by the schema.
    jsonschema.validate(minimal(schema, schema), schema)


def minimal(schema: dict, root: dict) -> Any:
    if "$ref" in schema:
        return minimal(root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], root)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema["type"]
    if kind == "object":
        return {k: minimal(schema["properties"][k], root) for k in schema.get("required", [])}
    if kind == "array":
        return [minimal(schema["items"], root) for _ in range(schema.get("minItems", 0))]
    return {"string": "x", "number": 0.5, "integer": 1, "boolean": True}[kind]


def test_media_is_image_or_video_and_only_video_domains_are_video() -> None:
    assert {p.media for p in seeds.domains().values()} == {"image", "video"}
    assert sorted(n for n, p in seeds.domains().items() if p.media == "video") == sorted(VIDEO_DOMAINS)
    assert set(seeds.served_domains()) == set(ALL) - set(VIDEO_DOMAINS)


@pytest.mark.parametrize("name", sorted(set(ALL) - set(VIDEO_DOMAINS)))
def test_image_domain_becomes_a_structured_chat(name: str) -> None:
    chat = seeds.vlmrun_to_chat(VlmRunRequest(images=["https://example.com/a.png"], domain=name), "m")
    assert chat.response_format.json_schema.schema == json.loads(seeds.domains()[name].schema)
    assert chat.messages[0].content[-1].text == seeds.domains()[name].prompt


@pytest.mark.parametrize("name", VIDEO_DOMAINS)
def test_video_domain_is_refused_even_with_a_prompt_and_schema(name: str) -> None:
    for config in (VlmRunConfig(), VlmRunConfig(prompt="p", json_schema={"type": "object"})):
        with pytest.raises(InvalidRequest) as err:
            seeds.vlmrun_to_chat(VlmRunRequest(images=["https://example.com/a.png"], domain=name, config=config),
                                 "m")
        assert err.value.param == "domain"
        assert "video" in err.value.message and "not support" in err.value.message
        assert "unknown domain" not in err.value.message


class JsonEngine:
    """Answers every request with ``{}``; records what it was sent."""

    def __init__(self) -> None:
        self.ready = True
        self.max_model_len: int | None = None
        self.requests: list[EngineRequest] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def recheck(self) -> bool:
        return self.ready

    @property
    def local_ready(self) -> bool:  # (as if it ran in the gateway)
        return self.ready

    async def generate(self, request: EngineRequest):
        self.requests.append(request)
        prompt = len(request.token_ids) + 99 * len(request.images)
        yield EngineDelta(0, "{}", prompt_token_ids=list(range(prompt)), finish_reason="stop")
        yield EngineDelta(prompt_tokens=prompt, completion_tokens=1)


@pytest.fixture(scope="module")
def engine() -> JsonEngine:
    return JsonEngine()


@pytest.fixture(scope="module")
def client(tiny_checkpoint, engine):
    settings = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))])
    with TestClient(create_app(settings, engine_factory=lambda model, session: engine)) as c:
        yield c


@pytest.mark.parametrize("name", VIDEO_DOMAINS)
@pytest.mark.parametrize("batch", [False, True])
def test_video_domain_is_a_400_over_http(client, engine, name: str, batch: bool) -> None:
    before = len(engine.requests)
    r = client.post("/v1/image/generate", json={"images": [png_data_uri()], "domain": name, "model": "m",
                                                "batch": batch})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "domain" and error["type"] == "invalid_request_error"
    assert "video" in error["message"] and "not support" in error["message"]
    assert len(engine.requests) == before  # refused before anything ran


def test_new_image_domain_decodes_with_its_schema_over_http(client, engine) -> None:
    r = client.post("/v1/image/generate", json={"images": [png_data_uri()], "domain": "document.resume",
                                                "model": "m"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed" and r.json()["response"] == {}
    sent = engine.requests[-1].sampling.structured_outputs
    assert sent["json"] == json.loads(seeds.domains()["document.resume"].schema)
    unknown = client.post("/v1/image/generate", json={"images": [png_data_uri()], "domain": "no.such", "model": "m"})
    assert unknown.status_code == 400 and "unknown domain" in unknown.json()["error"]["message"]


@pytest.mark.parametrize("config, param", [
    ({"prompt": ""}, "config.prompt"), ({"json_schema": {}}, "config.json_schema"),
    ({"prompt": " ", "json_schema": {"type": "object"}}, "config.prompt"),
])
@pytest.mark.parametrize("domain", ["image.caption", "my.own"])
def test_an_empty_prompt_or_schema_is_a_400_naming_it(client, engine, config, param, domain) -> None:
    before = len(engine.requests)
    if domain == "my.own":  # a domain of one's own needs both: the other one is given
        config = {"prompt": "Describe", "json_schema": {"type": "object"}, **config}
    r = client.post("/v1/image/generate", json={"images": [png_data_uri()], "domain": domain, "model": "m",
                                                "config": config})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert len(engine.requests) == before


def _sdk_reads(body: dict) -> None:
    """What the vlmrun SDK's ``PredictionResponse`` requires (vlmrun/client/types.py): an id, a status of
    its list, ``created_at`` as a datetime and ``usage`` as an object."""
    from datetime import datetime

    assert body["status"] in ("enqueued", "pending", "running", "completed", "failed", "paused")
    datetime.fromisoformat(body["created_at"])
    assert isinstance(body["id"], str) and isinstance(body["usage"], dict)


def test_every_answer_is_one_the_vlmrun_sdk_reads(client, engine) -> None:
    from tests.gateway.api.test_routes import poll

    body = {"images": [png_data_uri()], "domain": "image.caption", "model": "m"}
    _sdk_reads(client.post("/v1/image/generate", json=body).json())
    pending = client.post("/v1/image/generate", json={**body, "batch": True}).json()
    _sdk_reads(pending)
    for route in ("/v1/image/generate", "/v1/predictions"):  # (the SDK polls the second)
        done = poll(client, f"{route}/{pending['id']}")
        _sdk_reads(done)
        assert done["id"] == pending["id"] and done["status"] == "completed"
        assert done["created_at"] == pending["created_at"]  # one prediction, one creation time
    failing = {**body, "images": ["data:image/png;base64,aGVsbG8="], "batch": True}
    failed = poll(client, f"/v1/predictions/{client.post('/v1/image/generate', json=failing).json()['id']}")
    _sdk_reads(failed)
    assert failed["status"] == "failed" and failed["error"]


def test_a_chat_job_is_not_a_vlmrun_prediction(client) -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    job = client.post("/queue/m", json=chat).json()["request_id"]
    r = client.get(f"/v1/image/generate/{job}")
    assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"


@pytest.mark.parametrize("sdk, ours", [("lo", "low"), ("hi", "high"), ("auto", "auto")])
def test_the_sdks_detail_names_are_read(sdk, ours) -> None:
    req = VlmRunRequest(images=["https://example.com/a.png"], config=VlmRunConfig(detail=sdk))  # type: ignore[arg-type]
    assert seeds.vlmrun_to_chat(req, "m").messages[0].content[0].image_url.detail == ours


def test_max_tokens_is_a_cap_past_the_context(client, engine) -> None:
    """The vlmrun SDK sends ``max_tokens: 65535`` with every config: past the model's context it means
    "what the prompt leaves" (vLLM's reading of no max_tokens), not a 400."""
    body = {"images": [png_data_uri()], "domain": "image.caption", "model": "m"}
    engine.max_model_len = 4096
    try:
        from tests.gateway.api.test_routes import poll

        for batch in (False, True):
            r = client.post("/v1/image/generate", json={**body, "batch": batch, "config": {"max_tokens": 65535}})
            assert r.status_code == 200, r.text
            assert poll(client, f"/v1/predictions/{r.json()['id']}")["status"] == "completed" if batch else True
            assert engine.requests[-1].sampling.max_tokens is None
        assert client.post("/v1/image/generate", json={**body, "config": {"max_tokens": 64}}).status_code == 200
        assert engine.requests[-1].sampling.max_tokens == 64
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 65535}
        assert client.post("/v1/chat/completions", json=chat).status_code == 400  # (OpenAI's routes: a demand)
    finally:
        engine.max_model_len = None
