"""Run one request to completion (not streamed): the chat and completions routes, the seed adapters
and the job worker all go through these two functions, so there is one code path. (The Responses API
runs its unstreamed turns as streams, ``responses_api.run.whole``: a whole answer would not say whether
a call came before its text or after it.)

Each returns the response body and the headers to send with it (the caller's rate-limit state). A
``queued`` request (a job) waits for a concurrency slot instead of answering 429."""

from __future__ import annotations

from vlm_gateway.limits.rate import ANONYMOUS, Caller
from vlm_gateway.pipeline import Prepared, Services, generate, prepare_chat, prepare_completion
from vlm_gateway.responses import chat_completion, completion
from vlm_gateway.schemas.openai import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest

Headers = dict[str, str]


def _whole_answers(prepared: Prepared) -> None:
    """Nothing goes to the client before the end: ask the engines for whole answers, not event streams."""
    for request in prepared.engine_requests:
        request.stream = False


async def complete_chat(svc: Services, req: ChatCompletionRequest, caller: Caller = ANONYMOUS,
                        queued: bool = False, max_tokens_at_most: bool = False) -> tuple[ChatCompletion, Headers]:
    """A whole chat completion. ``max_tokens_at_most``: ``max_tokens`` is a cap, not a demand (a seed
    API's default that may pass the context: the answer gets what the prompt leaves instead of a 400)."""
    prepared = await prepare_chat(svc, req, caller, queued)
    prepared.max_tokens_at_most = max_tokens_at_most
    _whole_answers(prepared)
    body = await chat_completion(prepared, generate(svc, prepared), req.return_token_ids)
    return body, prepared.permit.headers


async def complete_text(svc: Services, req: CompletionRequest,
                        caller: Caller = ANONYMOUS, queued: bool = False) -> tuple[Completion, Headers]:
    prepared = await prepare_completion(svc, req, caller, queued)
    _whole_answers(prepared)
    body = await completion(prepared, generate(svc, prepared), req.return_token_ids)
    return body, prepared.permit.headers
