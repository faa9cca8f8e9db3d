"""GET /v1/models (and /models): the served models with their image limit and context length."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from vlm_gateway.api import ERRORS, caller, services
from vlm_gateway.schemas.openai import ModelCard, ModelList


@get(["/v1/models", "/models"], responses=ERRORS)
async def list_models(request: Request[Any, Any, Any]) -> ModelList:
    svc = services(request)
    allowed = caller(request).models  # a key limited to some models sees only those
    return ModelList([
        ModelCard(id=name, created=m.created, owned_by=m.owned_by, family=m.family.name,
                  max_images=min(m.max_images, svc.settings.images.max_images_per_request),
                  context_length=m.context_length or svc.engines[m.id].max_model_len)
        for m in svc.models.models for name in (m.id, *m.aliases)
        if allowed is None or any(n in allowed for n in (m.id, *m.aliases))
    ])
