"""POST /v1/completions: a raw prompt, with hand-written image markers and an ordered ``images`` list."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.params import JSONBody
from litestar.response import Stream

from vlm_gateway.api import ERRORS, caller, services, success, while_connected
from vlm_gateway.complete import complete_text
from vlm_gateway.pipeline import prepare_completion
from vlm_gateway.schemas.openai import Completion, CompletionRequest
from vlm_gateway.streaming import completion_events, stream_response


@post(["/v1/completions", "/completions"], status_code=200, responses={
    **ERRORS, 200: success(Completion, "The completion; with `stream: true`, server-sent events of "
                           "`text_completion` chunks (`text/event-stream`) ending with `data: [DONE]`.")})
async def completions(request: Request[Any, Any, Any], data: JSONBody[CompletionRequest]) -> Response[Any] | Stream:
    svc, req = services(request), data
    if not req.stream:
        body, headers = await while_connected(request, complete_text(svc, req, caller(request)))
        return Response(body, headers=headers)
    prepared = await prepare_completion(svc, req, caller(request))
    response = stream_response(svc, prepared, completion_events, req.stream_options, req.return_token_ids)
    return await while_connected(request, response)  # (the wait for the first delta)
