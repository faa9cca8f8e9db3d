"""GET /v1/models (and /models): the served models with their image limit and context length;
GET /v1/models/{model}: one of them (an id or an alias), as the OpenAI SDK's ``models.retrieve`` asks."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.params import FromPath

from vlm_gateway.api import ERRORS, caller, services
from vlm_gateway.errors import ModelNotFound
from vlm_gateway.pipeline import Services
from vlm_gateway.schemas.openai import ModelCard, ModelList


def _cards(svc: Services, allowed: tuple[str, ...] | None) -> list[ModelCard]:
    """A card per served name (ids and aliases) that a key limited to some models may use."""
    return [
        ModelCard(id=name, created=m.created, owned_by=m.owned_by, family=m.family.name,
                  max_images=min(m.max_images, svc.settings.images.max_images_per_request),
                  context_length=m.context_length or svc.engines[m.id].max_model_len)
        for m in svc.models.models for name in (m.id, *m.aliases)
        if allowed is None or any(n in allowed for n in (m.id, *m.aliases))
    ]


@get(["/v1/models", "/models"], responses=ERRORS)
async def list_models(request: Request[Any, Any, Any]) -> ModelList:
    return ModelList(_cards(services(request), caller(request).models))


@get(["/v1/models/{model:path}", "/models/{model:path}"], responses=ERRORS)
async def retrieve_model(request: Request[Any, Any, Any], model: FromPath[str]) -> ModelCard:
    """A model id may hold slashes (``Qwen/Qwen2.5-VL-3B-Instruct``): the rest of the path is the name."""
    name = model.lstrip("/")
    for card in _cards(services(request), caller(request).models):
        if card.id == name:
            return card
    raise ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.", param="model")
