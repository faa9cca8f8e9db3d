"""One exception tree for every failure, rendered once as OpenAI's error JSON.

Code anywhere raises a ``GatewayError`` subclass; ``error_response`` (registered as the app's exception
handler) turns it into ``{"error": {"message", "type", "param", "code"}}`` with the right status.
Nothing returns errors as values. Engines raise their own ``vlm_gateway.engines.errors``; they are
mapped here by whose fault they are (``from_engine_error``):

    EngineRejected (context_length_exceeded)  400 invalid_request_error  context_length_exceeded  param: prompt's
    EngineRejected (invalid_value)            400 invalid_request_error  invalid_value
    EngineDown                                503 service_unavailable    engine_unavailable (Retry-After)
    EngineTimeout                             504 timeout                timeout
    EngineCrashed                             502 server_error           engine_error
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from vlm_gateway.engines.errors import EngineDown, EngineError, EngineRejected, EngineTimeout

if TYPE_CHECKING:  # litestar is imported where an error becomes a response, not by every importer
    from litestar import Request, Response

log = logging.getLogger("vlm_gateway")


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class SeedErrorBody(msgspec.Struct):
    """The error shape of the seeds' own routes (``opt={"error_shape": "seed"}`` on the handler)."""

    error: str
    status_code: int
    timestamp: float


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}

    def body(self) -> ErrorEnvelope:
        return ErrorEnvelope(ErrorBody(self.message, self.type, self.param, self.code))


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class PromptRefused(InvalidRequest):
    """The model's own chat template refuses this conversation (e.g. Gemma 3's role alternation)."""

    default_code = "invalid_conversation"


class ContextLengthExceeded(InvalidRequest):
    """The prompt plus the completion asked for do not fit in the model's context."""

    default_code = "context_length_exceeded"

    @classmethod
    def tokens(cls, limit: int, prompt: int, completion: int | None, param: str) -> ContextLengthExceeded:
        """OpenAI's wording; ``param`` is ``messages`` (chat) or ``prompt`` (completions)."""
        if completion is None:
            return cls(f"This model's maximum context length is {limit} tokens. However, your {param} resulted "
                       f"in {prompt} tokens, leaving no room for the completion. Please reduce the length of "
                       f"the {param}.", param=param)
        return cls(f"This model's maximum context length is {limit} tokens. However, your {param} resulted in "
                   f"{prompt + completion} tokens ({prompt} in the {param}, {completion} in the completion). "
                   f"Please reduce the length of the {param} or completion.", param=param)


class ImageError(InvalidRequest):
    default_code = "invalid_image"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class QuotaExceeded(PermissionDenied):
    """Storing this would go over a configured storage quota (uploaded files): not retryable as such."""

    default_code = "quota_exceeded"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class EngineUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    default_code = "engine_unavailable"


class EngineFailed(GatewayError):
    status = 502
    type = "server_error"
    default_code = "engine_error"


class Timeout(GatewayError):
    status = 504
    type = "timeout"
    default_code = "timeout"


class ClientGone(GatewayError):
    """The client closed its connection before the answer (nginx's 499): no one reads this one."""

    status = 499
    type = "invalid_request_error"
    default_code = "client_closed_request"


_ENCODER = msgspec.json.Encoder()
_STATUS_TYPES = {400: InvalidRequest, 401: AuthenticationFailed, 403: PermissionDenied, 404: NotFound,
                 413: PayloadTooLarge, 429: RateLimited, 503: EngineUnavailable}


def from_validation(exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidRequest:
    """A msgspec decode error → 400 naming the parameter (``messages[0].content``)."""
    text = str(exc)
    match = re.search(r"at `\$(.*?)`", text)
    param = _field(match.group(1).lstrip(".")) if match else None
    return InvalidRequest(text, param=param or None, code="invalid_value")


def _field(path: str) -> str:
    """msgspec's path to a value as the client names the field: a map's value (``logit_bias[...]``) is
    the map's."""
    return path.replace("[...]", "")


@contextlib.contextmanager
def params_renamed(rename: Callable[[str], str | None]) -> Iterator[None]:
    """A ``GatewayError`` raised inside names ``rename(param)``: for adapters (the Responses API, the seeds'
    routes) whose body became a chat request, so the client reads its own field, not the chat's."""
    try:
        yield
    except GatewayError as exc:
        if exc.param is not None:
            old, exc.param = exc.param, rename(exc.param)
            if exc.param and exc.param != old:  # a message that names the field names the client's
                exc.message = exc.message.replace(old, exc.param)
        raise


# Sampling fields the client names as the engine does (vLLM's SamplingParams): a rejection of one of
# these names the client's field. Others (max_tokens, which may be max_completion_tokens; logprobs; the
# prompt's token ids) are the gateway's translation and are not named.
SAMPLING_PARAMS_AS_SENT = frozenset({
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "n", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logit_bias", "min_tokens",
})


# vLLM's refusals of a structured output's schema, which name no field ("Failed to transform json schema
# into a grammar: …", "… features not supported by xgrammar", "Invalid JSON grammar specification").
_SCHEMA_REFUSED = re.compile(r"grammar|json schema|structured.output", re.IGNORECASE)


def from_engine_error(exc: EngineError, param: str | None = None, structured: str | None = None) -> GatewayError:
    """An engine's failure by whose fault it is: what it rejects is the caller's (400, naming ``param``,
    the prompt's field, for a context overflow, the sampling field the engine named, or ``structured``,
    the field a refused schema came from); the rest is the engine's (5xx)."""
    if isinstance(exc, EngineRejected):
        if exc.kind == "context_length_exceeded":
            return ContextLengthExceeded(exc.message, param=param)
        named = exc.param if exc.param in SAMPLING_PARAMS_AS_SENT else None
        if named is None and structured is not None and _SCHEMA_REFUSED.search(exc.message):
            named = structured
        return InvalidRequest(exc.message, param=named, code="invalid_value")
    if isinstance(exc, EngineDown):
        retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return EngineUnavailable(exc.message, headers=retry)
    if isinstance(exc, EngineTimeout):
        return Timeout(exc.message)
    return EngineFailed(exc.message)


def _from_typed_body(problem: dict[str, Any]) -> InvalidRequest:
    """A typed body (``data: SomeStruct`` on a handler) that Litestar refused: its first problem, naming
    the field (``{"message": "Expected `str`, got `int`", "key": "input_file_id", "source": "body"}``)."""
    message = str(problem.get("message") or "invalid request body")
    if message == "'data'":  # no body at all (Litestar's KeyError for the missing value)
        message = "the request body is empty: send a JSON object"
    key = problem.get("key")
    where = _field(str(key)) if key and key != "data" else None
    missing = re.search(r"missing required field `(.+?)`", message)
    param = ".".join(p for p in (where, missing.group(1)) if p) if missing else where
    return InvalidRequest(f"{param}: {message}" if param and not missing else message, param=param or None,
                          code="invalid_value")


def _as_gateway_error(exc: Exception) -> GatewayError:
    from litestar.exceptions import HTTPException

    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, EngineError):  # normally mapped (with its param) where the pipeline reads the engine
        return from_engine_error(exc)
    if isinstance(exc, (msgspec.ValidationError, msgspec.DecodeError)):
        return from_validation(exc)
    if isinstance(exc, HTTPException):
        if exc.status_code == 400 and isinstance(exc.extra, list) and exc.extra and isinstance(exc.extra[0], dict):
            return _from_typed_body(exc.extra[0])
        kind = _STATUS_TYPES.get(exc.status_code)
        if kind is not None:
            err = kind(str(exc.detail))
            err.headers = dict(exc.headers or {})
            return err
        err = (InvalidRequest if 400 <= exc.status_code < 500 else GatewayError)(str(exc.detail))  # 405, …
        err.status = exc.status_code  # type: ignore[misc]
        return err
    if isinstance(exc, RecursionError):  # a body nested past what the decoder (or json) will follow
        return InvalidRequest("the JSON body is nested too deeply", code="invalid_value")
    log.exception("unhandled error", exc_info=exc)
    return GatewayError("internal server error")


def _error_shape(request: Request[Any, Any, Any] | None) -> str:
    try:
        return request.route_handler.opt.get("error_shape", "openai")  # type: ignore[union-attr]
    except (AttributeError, KeyError):  # no request, or no route matched
        return "openai"


def error_response(request: Request[Any, Any, Any] | None, exc: Exception) -> Response[bytes]:
    """The one place an exception becomes an HTTP response."""
    from litestar import MediaType, Response

    err = _as_gateway_error(exc)
    state = request.scope.setdefault("state", {}) if request is not None else {}
    state["error_code"] = err.code  # for the access log (``vlm_gateway.api.access``)
    if err.status >= 500 and isinstance(exc, (GatewayError, EngineError)):
        log.warning("%s: %s (request %s)", type(err).__name__, err.message, state.get("request_id"))
    if _error_shape(request) == "seed":  # (no field for the param: the message names it)
        named = err.message if not err.param or err.message.startswith(err.param) else f"{err.param}: {err.message}"
        body: Any = SeedErrorBody(named, err.status, time.time())
    else:
        body = err.body()
    return Response(
        content=_ENCODER.encode(body),
        status_code=err.status,
        media_type=MediaType.JSON,
        headers=err.headers,
    )
