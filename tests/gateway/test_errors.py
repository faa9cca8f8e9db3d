import msgspec
import pytest
from litestar.exceptions import NotFoundException

from vlm_gateway.errors import (
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    RateLimited,
    error_response,
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
