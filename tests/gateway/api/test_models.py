"""GET /v1/models and /v1/models/{model} for a key limited to some models: it sees and retrieves only
those (by id or alias); another key sees every served name. The OpenAI SDK's ``models.list`` and
``models.retrieve`` against the app."""

from __future__ import annotations

import openai
import pytest
from litestar.testing import TestClient

from tests.gateway.api.test_routes import ScriptedEngine
from vlm_gateway.app import create_app
from vlm_gateway.limits import ConfigKey, LimitSettings
from vlm_gateway.limits.keys import hash_secret
from vlm_gateway.settings import ModelSettings, Settings

KEYS = [ConfigKey(name="narrow", hash=hash_secret("vlm-narrow-secret"), rpm=0, concurrency=0, models=["a"]),
        ConfigKey(name="wide", hash=hash_secret("vlm-wide-secret"), rpm=0, concurrency=0)]


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    settings = Settings(models=[ModelSettings(id="a", checkpoint=str(tiny_checkpoint), aliases=["org/a-alias"]),
                                ModelSettings(id="b", checkpoint=str(tiny_checkpoint))],
                        limits=LimitSettings(keys=KEYS))
    with TestClient(create_app(settings, engine_factory=lambda model, session: ScriptedEngine())) as c:
        yield c


def sdk(client: TestClient, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=str(client.base_url) + "/v1", api_key=secret, http_client=client,
                         max_retries=0)


def test_a_key_lists_and_retrieves_only_its_models(client) -> None:
    narrow, wide = sdk(client, "vlm-narrow-secret"), sdk(client, "vlm-wide-secret")
    assert [m.id for m in narrow.models.list()] == ["a", "org/a-alias"]
    assert [m.id for m in wide.models.list()] == ["a", "org/a-alias", "b"]
    card = narrow.models.retrieve("org/a-alias")
    assert (card.id, card.object, card.model_extra["family"]) == ("org/a-alias", "model", "llava_1_5")
    assert wide.models.retrieve("b").id == "b"
    with pytest.raises(openai.NotFoundError) as info:
        narrow.models.retrieve("b")  # served, but not to this key: as if it did not exist
    assert info.value.code == "model_not_found" and info.value.body["param"] == "model"
    with pytest.raises(openai.AuthenticationError):
        sdk(client, "vlm-wrong").models.retrieve("a")
