"""POST /v1/chat/completions/render: a chat request's exact prompt and token ids, without generating.

The body is the chat completion's. It goes through the same ``prepare_chat`` as
``/v1/chat/completions`` (model, key and limits, images loaded and checked, template, tokenizer) and
stops there: the engine is never called. The admission permit is released at once.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.params import JSONBody

from vlm_gateway.api import ERRORS, caller, services
from vlm_gateway.pipeline import prepare_chat
from vlm_gateway.schemas.openai import ChatCompletionRequest
from vlm_gateway.schemas.render import PlaceholderRange, RenderedChat, RenderFeatures


@post("/v1/chat/completions/render", status_code=200, responses=ERRORS)
async def render_chat_completion(request: Request[Any, Any, Any],
                                 data: JSONBody[ChatCompletionRequest]) -> Response[RenderedChat]:
    svc = services(request)
    prepared = await prepare_chat(svc, data, caller(request))
    try:
        engine_request = prepared.engine_requests[0]
        ids = engine_request.token_ids
        family = prepared.model.family
        found = svc.tokenizers[prepared.model.id].token_ids((family.image_token,))
        token_id = found[0] if found else None
        if engine_request.features is not None:  # the gateway made the images' inputs: ids already expanded
            placed = [PlaceholderRange(p.offset, p.features.tokens) for p in engine_request.features]
        else:  # one placeholder id per image, which the engine expands
            placed = [PlaceholderRange(i, 1) for i, t in enumerate(ids) if token_id is not None and t == token_id]
        features = RenderFeatures(image_token=family.image_token, image_token_id=token_id,
                                  mm_placeholders=placed) if prepared.image_count else None
        body = RenderedChat(
            request_id=prepared.response_id,
            model=prepared.model_name,
            prompt=prepared.prompt_text or "",
            token_ids=list(ids),
            token_count=len(ids),
            image_count=prepared.image_count,
            image_tokens=sum(p.length for p in placed) if placed else prepared.image_count,
            images_expanded=engine_request.features is not None,
            features=features,
            max_tokens=prepared.sampling.max_tokens,
        )
    finally:
        await prepared.permit.release()  # nothing ran: no tokens to count
    return Response(body, headers=prepared.permit.headers)
