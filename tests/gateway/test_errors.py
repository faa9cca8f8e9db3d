import msgspec
import pytest
from litestar.exceptions import NotFoundException

from vlm_gateway.engines.errors import EngineCrashed, EngineDown, EngineRejected, EngineTimeout
from vlm_gateway.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    RateLimited,
    error_response,
    from_engine_error,
)
from vlm_gateway.schemas.openai import DECODE_CHAT


def body(resp) -> dict:
    return msgspec.json.decode(resp.content)


@pytest.mark.parametrize("exc,status,etype,code", [
    (InvalidRequest("bad", param="x"), 400, "invalid_request_error", None),
    (ModelNotFound("nope", param="model"), 404, "invalid_request_error", "model_not_found"),
    (PayloadTooLarge("big"), 413, "invalid_request_error", "request_too_large"),
    (RateLimited("slow down", headers={"Retry-After": "3"}), 429, "rate_limit_error", "rate_limit_exceeded"),
    (EngineUnavailable("later"), 503, "service_unavailable", "engine_unavailable"),
])
def test_gateway_errors_render_openai_shape(exc, status, etype, code) -> None:
    resp = error_response(None, exc)
    assert resp.status_code == status
    err = body(resp)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["message"], err["type"], err["code"]) == (exc.message, etype, code)
    assert resp.headers.get("Retry-After") == exc.headers.get("Retry-After")


def test_validation_error_names_the_param() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        DECODE_CHAT.decode(b'{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}')
    resp = error_response(None, info.value)
    assert resp.status_code == 400
    assert body(resp)["error"]["param"] == "messages[0].content[0]"


def test_malformed_json_is_400() -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        DECODE_CHAT.decode(b"{nope")
    assert error_response(None, info.value).status_code == 400


def test_framework_http_errors_keep_status_and_shape() -> None:
    resp = error_response(None, NotFoundException("no route"))
    assert resp.status_code == 404 and body(resp)["error"]["type"] == "invalid_request_error"


def test_unexpected_exception_is_500_without_details() -> None:
    resp = error_response(None, RuntimeError("secret internals"))
    assert resp.status_code == 500
    assert "secret" not in body(resp)["error"]["message"]


@pytest.mark.parametrize("exc,param,status,etype,code", [
    (EngineRejected("The decoder prompt (length 700) is longer than the maximum model length of 512.",
                    "context_length_exceeded"), "messages", 400, "invalid_request_error", "context_length_exceeded"),
    (EngineRejected("too long", "context_length_exceeded"), "prompt", 400, "invalid_request_error",
     "context_length_exceeded"),
    (EngineRejected("temperature must be non-negative"), None, 400, "invalid_request_error", "invalid_value"),
    # a sampling field the engine names, which the client named the same: named; the gateway's own fields not
    (EngineRejected("token_id(s) [9] in logit_bias contain out-of-vocab token ids", param="logit_bias"),
     "logit_bias", 400, "invalid_request_error", "invalid_value"),
    (EngineRejected("bad mm_placeholders", param="features"), None, 400, "invalid_request_error", "invalid_value"),
    (EngineDown("no engine is up", retry_after_s=5), None, 503, "service_unavailable", "engine_unavailable"),
    (EngineTimeout("too slow"), None, 504, "timeout", "timeout"),
    (EngineCrashed("engine answered 500: boom"), None, 502, "server_error", "engine_error"),
])
def test_engine_errors_map_by_whose_fault(exc, param, status, etype, code) -> None:
    resp = error_response(None, from_engine_error(exc, param or "prompt"))  # only an overflow names the field
    assert resp.status_code == status
    err = body(resp)["error"]
    assert (err["message"], err["type"], err["code"], err["param"]) == (exc.message, etype, code, param)
    if isinstance(exc, EngineDown):
        assert resp.headers["Retry-After"] == "5"


def test_unmapped_engine_error_still_renders_by_fault() -> None:
    resp = error_response(None, EngineRejected("too long", "context_length_exceeded"))
    assert resp.status_code == 400 and body(resp)["error"]["code"] == "context_length_exceeded"
    assert error_response(None, EngineCrashed("boom")).status_code == 502


def test_context_length_message_is_openai_like() -> None:
    err = ContextLengthExceeded.tokens(512, 500, 100, "messages")
    assert err.message == ("This model's maximum context length is 512 tokens. However, your messages resulted in "
                           "600 tokens (500 in the messages, 100 in the completion). Please reduce the length of "
                           "the messages or completion.")
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", "messages")
    assert ContextLengthExceeded.tokens(512, 600, None, "prompt").param == "prompt"
