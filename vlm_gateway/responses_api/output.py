"""Chat output → the Response object: output items, usage, status, error.

``base_response`` is the response as it starts (status ``in_progress``, no output), echoing the request
as OpenAI does; ``final`` completes it with its output items (built from the chat chunks by
``events.OutputBuilder``, streamed or not) and is the one place status, usage and ``incomplete_details``
are decided.
A chat ``finish_reason`` of ``length`` is an ``incomplete`` response (``max_output_tokens``).
"""

from __future__ import annotations

import time
import uuid

import msgspec

from vlm_gateway.errors import GatewayError
from vlm_gateway.schemas.openai import ChoiceLogprobs, Usage
from vlm_gateway.schemas.responses import (
    IncompleteDetails,
    InputTokensDetails,
    Logprob,
    OutputItem,
    OutputTokensDetails,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
    TopLogprob,
)

# The codes a Response's ``error.code`` may take (OpenAI's list; the SDK checks it).
_ERROR_CODES = {"server_error", "rate_limit_exceeded", "invalid_prompt", "invalid_image", "invalid_image_format",
                "invalid_base64_image", "invalid_image_url", "image_too_large", "image_too_small",
                "image_parse_error", "invalid_image_mode", "image_file_too_large", "unsupported_image_media_type",
                "empty_image_file", "failed_to_download_image", "image_file_not_found"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def base_response(req: ResponsesRequest) -> ResponseObject:
    return ResponseObject(
        id=new_id("resp"),
        created_at=int(time.time()),
        status="in_progress",
        model=req.model,
        instructions=req.instructions,
        tools=req.tools or [],
        tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
        parallel_tool_calls=req.parallel_tool_calls is not False,
        text=req.text or TextConfig(),
        temperature=req.temperature,
        top_p=req.top_p,
        top_logprobs=req.top_logprobs,
        max_output_tokens=req.max_output_tokens,
        previous_response_id=req.previous_response_id,
        store=req.store is not False,
        background=bool(req.background),
        metadata=req.metadata or {},
        user=req.user,
        truncation=req.truncation or "disabled",
        prompt_cache_key=req.prompt_cache_key,
        safety_identifier=req.safety_identifier,
    )


def usage(chat: Usage | None) -> ResponseUsage | None:
    if chat is None:
        return None
    details = chat.prompt_tokens_details
    return ResponseUsage(
        input_tokens=chat.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=details.cached_tokens if details else 0,
                                                image_tokens=details.image_tokens if details else 0),
        output_tokens=chat.completion_tokens,
        output_tokens_details=OutputTokensDetails(),
        total_tokens=chat.total_tokens,
    )


def logprobs(chat: ChoiceLogprobs | None) -> list[Logprob]:
    """Chat's per-token logprobs in the Responses shape (``bytes`` is required there)."""
    if chat is None or not chat.content:
        return []
    return [Logprob(t.token, t.bytes if t.bytes is not None else list(t.token.encode()), t.logprob,
                    [TopLogprob(c.token, c.bytes if c.bytes is not None else list(c.token.encode()), c.logprob)
                     for c in t.top_logprobs])
            for t in chat.content]


def final(base: ResponseObject, output: list[OutputItem], chat_usage: Usage | None,
          finish_reason: str | None) -> ResponseObject:
    incomplete = finish_reason == "length"
    return msgspec.structs.replace(
        base,
        status="incomplete" if incomplete else "completed",
        completed_at=None if incomplete else int(time.time()),
        output=output,
        usage=usage(chat_usage),
        incomplete_details=IncompleteDetails("max_output_tokens") if incomplete else None,
    )


def error(exc: GatewayError) -> ResponseError:
    """A gateway error as a Response's ``error`` (its code one of OpenAI's, its type the gateway's)."""
    if exc.code in _ERROR_CODES:
        code = exc.code
    elif exc.status == 429:
        code = "rate_limit_exceeded"
    else:
        code = "server_error" if exc.status >= 500 else "invalid_prompt"
    return ResponseError(code=code, message=exc.message, param=exc.param, type=exc.type)


def failed(base: ResponseObject, exc: GatewayError, output: list[OutputItem] | None = None) -> ResponseObject:
    return msgspec.structs.replace(base, status="failed", error=error(exc), output=output or [])
