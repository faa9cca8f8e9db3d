"""GET /metrics: Prometheus' text format (see vlm_gateway/metrics.py). Public, like /health: scrapers
carry no API key, and nothing in it is a secret (keys appear by name)."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, get
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from vlm_gateway import metrics
from vlm_gateway.api import services
from vlm_gateway.errors import GatewayError

APP_NAME = "vlm_gateway"
UNCOUNTED = ("/metrics", "/schema", "/playground")  # scrapes, the docs and the playground


def http_metrics(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: each HTTP request's arrival (``metrics.ARRIVED``, which the pipeline's timings start
    from), and the request counted by route template, method and status once it is answered
    (``vlm_gateway_requests_total``, ``…_request_duration_seconds``, ``…_requests_error_total`` for 5xx,
    ``…_requests_in_progress``). A ``GatewayError`` raised before the route runs (the API-key check) is
    counted with its status; the app's error handler renders it."""
    children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}  # labels → bound metrics

    def observe(method: str, path: str, status: int, seconds: float) -> None:
        bound = children.get((method, path, status))
        if bound is None:
            labels = (method, path, str(status), APP_NAME)
            bound = children[(method, path, status)] = (
                metrics.HTTP_REQUESTS.labels(*labels), metrics.HTTP_SECONDS.labels(*labels),
                metrics.HTTP_ERRORS.labels(*labels) if status >= 500 else None)
        count, duration, errors = bound
        count.inc()
        duration.observe(seconds)
        if errors is not None:
            errors.inc()

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.monotonic()
        metrics.ARRIVED.set(start)
        path = scope.get("path_template") or scope["path"]
        if path.startswith(UNCOUNTED):
            await app(scope, receive, send)
            return
        status = 0  # until the response starts

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = metrics.HTTP_IN_PROGRESS.labels(scope["method"], path, APP_NAME)
        in_progress.inc()
        try:
            await app(scope, receive, send_noting_status)
        except GatewayError as exc:
            status = status or exc.status
            raise
        finally:
            in_progress.dec()
            observe(scope["method"], path, status or 500, time.monotonic() - start)

    return middleware


@get("/metrics", opt={"public": True}, include_in_schema=False)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Gauges that are read rather than counted are read now: engine readiness, the job backlog, the loop's
    lag. Then every metric (every worker's, in multiprocess mode)."""
    for model_id, engine in services(request).engines.items():
        metrics.ENGINE_READY.labels(model_id).set(1 if engine.ready else 0)
    depth, oldest = await request.app.state.jobs.queue.backlog()
    metrics.JOBS_QUEUED.set(depth)
    metrics.JOBS_OLDEST.set(oldest)
    metrics.LOOP_LAG.set(request.app.state.lag.last_s)
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
