"""Run one request to completion (not streamed): the chat and completions routes, the seed adapters
and the job worker all go through these two functions, so there is one code path."""

from __future__ import annotations

from gateway.pipeline import Services, generate, prepare_chat, prepare_completion
from gateway.responses import chat_completion, completion
from gateway.schemas.openai import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest


async def complete_chat(svc: Services, req: ChatCompletionRequest) -> ChatCompletion:
    prepared = await prepare_chat(svc, req)
    return await chat_completion(prepared, generate(svc, prepared), req.return_token_ids)


async def complete_text(svc: Services, req: CompletionRequest) -> Completion:
    prepared = await prepare_completion(svc, req)
    return await completion(prepared, generate(svc, prepared), req.return_token_ids)
