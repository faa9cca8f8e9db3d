"""GET /metrics: Prometheus' text format (see vlm_gateway/metrics.py). Public, like /health: scrapers
carry no API key, and nothing in it is a secret (keys appear by name)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.plugins.prometheus import PrometheusConfig

from vlm_gateway import metrics
from vlm_gateway.api import services


def http_metrics() -> PrometheusConfig:
    """Litestar's Prometheus middleware: requests by route template, method and status, their duration
    and how many are in progress (``vlm_gateway_requests_total`` …); /metrics, the docs and the
    playground are left out."""
    return PrometheusConfig(app_name="vlm_gateway", prefix=metrics.PREFIX, group_path=True,
                            exclude=["^/metrics", "^/schema", "^/playground"])


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
