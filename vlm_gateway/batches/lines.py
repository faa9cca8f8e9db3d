"""Input and output lines: checking an input file, and writing what one request got.

``parse_input(data, endpoint, max_lines)`` reads a whole input file and raises ``InvalidRequest``
naming the first bad line (1-based, as an editor counts): not a JSON object, a missing or repeated
``custom_id``, a method other than ``POST``, a ``url`` other than the batch's endpoint, a ``body`` the
endpoint's schema refuses (the field is named: ``line 3: body.messages[0].content ...``), a streamed
request. Blank lines are skipped. What it returns is what the fan-out job queues, one job per line.

``output_line`` / ``error_line`` build the JSONL lines of the output and error files.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import msgspec

from vlm_gateway.errors import InvalidRequest, from_validation
from vlm_gateway.schemas.batches import BatchInputLine, BatchLineError, BatchOutputLine, BatchResponse
from vlm_gateway.schemas.openai import ChatCompletionRequest, CompletionRequest
from vlm_gateway.schemas.responses import ResponsesRequest

#: The request schema of each endpoint a batch may use (the same Structs the routes decode).
SCHEMAS: dict[str, type[msgspec.Struct]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/responses": ResponsesRequest,
}
_LINE = msgspec.json.Decoder(BatchInputLine)
_ENCODE = msgspec.json.Encoder()
PARAM = "input_file_id"


class Line(msgspec.Struct, frozen=True):
    """One request of a batch: ``index`` is its place among the requests (0-based), ``number`` its line
    in the file (1-based), ``body`` the request's JSON as the route would receive it."""

    index: int
    number: int
    custom_id: str
    model: str
    body: bytes


def _bad(number: int, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"line {number} of the input file: {message}", param=PARAM, code=code)


def _check_body(number: int, body: dict[str, Any], endpoint: str) -> str:
    """The request's model, once the endpoint's schema accepts ``body``."""
    try:
        msgspec.convert(body, SCHEMAS[endpoint])
    except msgspec.ValidationError as exc:
        err = from_validation(exc)
        where = f"body.{err.param}" if err.param else "body"
        raise _bad(number, f"{where}: {str(exc).split(' - at `')[0]}") from None
    if body.get("stream"):
        raise _bad(number, "body.stream: batch requests are not streamed; leave stream out or false")
    if endpoint == "/v1/responses" and body.get("background"):
        raise _bad(number, "body.background: a batch request already runs in the background; leave it out")
    return body["model"]


def parse_input(data: bytes, endpoint: str, max_lines: int) -> list[Line]:
    """The requests of an input file, checked (see the module docstring)."""
    lines: list[Line] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(lines) == max_lines:
            raise InvalidRequest(f"the input file has more than {max_lines} requests; split it into several "
                                 "batches", param=PARAM, code="too_many_requests")
        try:
            line = _LINE.decode(raw)
        except msgspec.DecodeError as exc:
            message = str(exc).split(" - at `")[0]
            if isinstance(exc, msgspec.ValidationError) and " - at `$." in str(exc):
                message = f"{str(exc).split(' - at `$.')[1].rstrip('`')}: {message}"
            raise _bad(number, f"not a valid request line ({message}); each line must be a JSON object "
                               'with "custom_id", "method", "url" and "body"') from None
        if not line.custom_id:
            raise _bad(number, "custom_id must be a non-empty string")
        if line.custom_id in seen:
            raise _bad(number, f"custom_id {line.custom_id[:64]!r} is used already (on line "
                               f"{seen[line.custom_id]}); each request needs its own", code="duplicate_custom_id")
        seen[line.custom_id] = number
        if line.method != "POST":
            raise _bad(number, f"method must be \"POST\", not {line.method[:16]!r}")
        if line.url != endpoint:
            raise _bad(number, f"url {line.url[:64]!r} is not the batch's endpoint {endpoint!r}; every line "
                               "must use the endpoint the batch was created for", code="mismatched_url")
        model = _check_body(number, line.body, endpoint)
        lines.append(Line(len(lines), number, line.custom_id, model, _ENCODE.encode(line.body)))
    if not lines:
        raise InvalidRequest("the input file has no requests", param=PARAM, code="empty_file")
    return lines


def _line_id() -> str:
    return "batch_req_" + secrets.token_hex(16)


def output_line(custom_id: str, status_code: int, body: bytes) -> bytes:
    """A request that ran: its status and JSON body (the error envelope when it failed)."""
    response = BatchResponse(status_code=status_code, request_id=f"req_{uuid.uuid4().hex}", body=msgspec.Raw(body))
    return _ENCODE.encode(BatchOutputLine(id=_line_id(), custom_id=custom_id, response=response))


def error_line(custom_id: str, code: str, message: str) -> bytes:
    """A request that never ran, and why."""
    return _ENCODE.encode(BatchOutputLine(id=_line_id(), custom_id=custom_id,
                                          error=BatchLineError(code=code, message=message)))
