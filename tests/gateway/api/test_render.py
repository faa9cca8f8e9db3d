"""POST /v1/chat/completions/render with the scripted engine: the prompt the template gives, the ids the
tokenizer gives, the images counted and placed, the API-key guard, and the engine never called. Also the
playground's routes (public page and assets, / redirect, off by setting)."""

from __future__ import annotations

import re

import msgspec
import pytest
from litestar.testing import TestClient

from tests.gateway.api.test_routes import ScriptedEngine
from tests.helpers import png_data_uri
from vlm_gateway.app import create_app
from vlm_gateway.limits import ConfigKey, LimitSettings
from vlm_gateway.limits.keys import hash_secret
from vlm_gateway.prompts.families import load_families
from vlm_gateway.prompts.order import strings_to_parts
from vlm_gateway.prompts.render import render_chat
from vlm_gateway.schemas.openai import ChatMessage
from vlm_gateway.schemas.render import RenderedChat
from vlm_gateway.settings import ModelSettings, Settings
from vlm_gateway.tokenize import Tokenizer

SECRET = "vlm-test-render-secret"
KEYS = [ConfigKey(name="tester", hash=hash_secret(SECRET), rpm=0, concurrency=0)]
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(scope="module")
def engines() -> dict[str, ScriptedEngine]:
    return {}


@pytest.fixture(scope="module")
def client(tiny_checkpoint, engines):
    settings = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint), aliases=["alias"],
                                              max_images=2)],
                        limits=LimitSettings(keys=KEYS))

    def factory(model, session):
        engines[model.id] = ScriptedEngine()
        return engines[model.id]

    with TestClient(create_app(settings, engine_factory=factory)) as c:
        yield c


def messages(images: int = 1, text: str = "What is in the picture?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": png_data_uri(), "detail": "low"}} for _ in range(images)]
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [*parts, {"type": "text",
                                                                                            "text": text}]}]


def expected(tiny_checkpoint, msgs: list[dict]) -> tuple[str, list[int], int]:
    """What the template and the tokenizer give for ``msgs`` on their own (the llava_1_5 family)."""
    family = load_families()["llava_1_5"]
    chat = msgspec.convert(msgs, list[ChatMessage])
    text = render_chat(family, strings_to_parts(chat)).text  # llava_1_5 reads list content only
    tokenizer = Tokenizer(str(tiny_checkpoint))
    ids = tokenizer.encode_sync(text, family.add_special_tokens)
    return text, ids, tokenizer.token_ids((family.image_token,))[0]


def test_render_is_the_template_and_the_tokenizer(client, engines, tiny_checkpoint) -> None:
    msgs = messages(images=1)
    before = len(engines["m"].requests)
    r = client.post("/v1/chat/completions/render", json={"model": "alias", "messages": msgs, "max_tokens": 7},
                    headers=AUTH)
    assert r.status_code == 200, r.text
    body = msgspec.convert(r.json(), RenderedChat)  # the typed answer, every field present
    text, ids, image_id = expected(tiny_checkpoint, msgs)
    assert body.prompt == text and "<image>" in text and "What is in the picture?" in text
    assert body.token_ids == ids and body.token_count == len(ids)
    assert body.image_count == 1 and body.image_tokens == 1 and body.images_expanded is False
    assert body.features is not None and body.features.image_token == "<image>"
    assert body.features.image_token_id == image_id
    assert [(p.offset, p.length) for p in body.features.mm_placeholders] == [(ids.index(image_id), 1)]
    assert body.model == "alias" and body.request_id.startswith("chatcmpl-") and body.max_tokens == 7
    assert body.object == "chat.completion.render"
    assert len(engines["m"].requests) == before  # nothing was generated


def test_render_ids_are_what_the_engine_would_be_sent(client, engines) -> None:
    msgs = messages(images=2, text="Compare them.")
    rendered = client.post("/v1/chat/completions/render", json={"model": "m", "messages": msgs}, headers=AUTH).json()
    assert rendered["image_count"] == 2 and rendered["image_tokens"] == 2
    assert len(rendered["features"]["mm_placeholders"]) == 2
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": msgs, "max_tokens": 2}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert engines["m"].requests[-1].token_ids == rendered["token_ids"]


def test_render_without_images_and_with_string_content(client, tiny_checkpoint) -> None:
    msgs = [{"role": "user", "content": "Hello"}]
    body = client.post("/v1/chat/completions/render", json={"model": "m", "messages": msgs}, headers=AUTH).json()
    text, ids, _ = expected(tiny_checkpoint, msgs)
    assert body["prompt"] == text and body["token_ids"] == ids
    assert body["image_count"] == 0 and body["image_tokens"] == 0 and body["features"] is None


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer vlm-wrong-key"}])
def test_render_needs_a_valid_key(client, engines, headers) -> None:
    before = len(engines["m"].requests)
    r = client.post("/v1/chat/completions/render", json={"model": "m", "messages": messages()}, headers=headers)
    assert r.status_code == 401
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert len(engines["m"].requests) == before


@pytest.mark.parametrize("body,status,param", [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": "m", "messages": []}, 400, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400, "temperature"),
    ({"model": "m", "messages": messages(images=3)}, 400, "messages"),  # over the model's max_images
])
def test_render_errors_are_openai_shaped(client, engines, body, status, param) -> None:
    before = len(engines["m"].requests)
    r = client.post("/v1/chat/completions/render", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert len(engines["m"].requests) == before


def test_render_is_in_the_openapi_schema_with_typed_body_and_answer(client) -> None:
    schema = client.get("/schema/openapi.json", headers=AUTH).json()
    op = schema["paths"]["/v1/chat/completions/render"]["post"]
    assert "ChatCompletionRequest" in str(op["requestBody"]) and "RenderedChat" in str(op["responses"]["200"])


def test_playground_is_public(client) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code in (301, 302, 307, 308) and r.headers["location"] == "/playground"
    page = client.get("/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/playground/app.js"' in page.text and 'href="/playground/style.css"' in page.text
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # nothing from elsewhere (no CDN)
    js = client.get("/playground/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/playground/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/playground/secrets.toml").status_code == 404
    assert client.get("/playground/..%2Fsettings.py").status_code == 404


def test_playground_can_be_turned_off(tiny_checkpoint) -> None:
    settings = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint))], playground=False)
    with TestClient(create_app(settings, engine_factory=lambda model, session: ScriptedEngine())) as c:
        assert c.get("/", follow_redirects=False).status_code == 404
        assert c.get("/playground").status_code == 404
        assert c.get("/playground/app.js").status_code == 404
