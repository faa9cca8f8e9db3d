"""POST /v1/chat/completions (and /chat/completions, as the seeds call it)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.params import JSONBody
from litestar.response import Stream

from vlm_gateway.api import ERRORS, caller, services, success, while_connected
from vlm_gateway.complete import complete_chat
from vlm_gateway.pipeline import prepare_chat
from vlm_gateway.schemas.openai import ChatCompletion, ChatCompletionRequest
from vlm_gateway.streaming import chat_events, stream_response


@post(["/v1/chat/completions", "/chat/completions"], status_code=200, responses={
    **ERRORS, 200: success(ChatCompletion, "The completion; with `stream: true`, server-sent events of "
                           "`chat.completion.chunk` objects (`text/event-stream`) ending with `data: [DONE]`.")})
async def chat_completions(request: Request[Any, Any, Any],
                           data: JSONBody[ChatCompletionRequest]) -> Response[Any] | Stream:
    svc, req = services(request), data
    if not req.stream:
        body, headers = await while_connected(request, complete_chat(svc, req, caller(request)))
        return Response(body, headers=headers)
    prepared = await prepare_chat(svc, req, caller(request))
    response = stream_response(svc, prepared, chat_events, req.stream_options, req.return_token_ids)
    return await while_connected(request, response)  # (the wait for the first delta)
