"""Every answer's request id (``X-Request-Id``) and its line in the access log (logger ``vlm_gateway.access``).

The outermost layer around the whole app (``create_app`` wraps Litestar's handler, so unmatched paths,
CORS preflights and errors the app's handler renders are seen too). A client's own ``X-Request-Id`` (up
to 128 characters of ``A-Za-z0-9._:/+=@-``) is kept, else one is made (``vlm_gateway.ids``: no uuid4 per
request). It goes back on the answer, into the scope's state (``request_id``, for log lines about the
request) and into one INFO line per request::

    POST /v1/chat/completions 200 12.3ms id=…
    POST /v1/chat/completions 404 0.9ms id=… code=model_not_found

(method, route template or path, status, milliseconds until the answer ended, id, and for an error the
code the error handler rendered). A client that left before its answer is logged 499 (``ClientGone``).
"""

from __future__ import annotations

import logging
import re
import time

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from vlm_gateway.ids import new_id

log = logging.getLogger("vlm_gateway.access")

HEADER = b"x-request-id"
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")  # safe in a header and a log line


def request_ids(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.monotonic()
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        rid = given if given is not None and _CLIENT_ID.fullmatch(given) else new_id().encode()
        state = scope.setdefault("state", {})
        state["request_id"] = text = rid.decode()  # type: ignore[typeddict-unknown-key]
        status = 0  # until the answer starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, rid)]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            if log.isEnabledFor(logging.INFO):
                path = scope.get("path_template") or scope["path"]
                code = state.get("error_code") if status >= 400 or not status else None
                log.info("%s %s %d %.1fms id=%s%s", scope["method"], path if path.isprintable() else repr(path),
                         status or 500, (time.monotonic() - start) * 1000, text, f" code={code}" if code else "")

    return middleware
