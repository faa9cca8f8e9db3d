"""GET /health in the seeds' shape: status, timestamp (ISO 8601, local time, as the FastVLM Vision API
sends it: ``2025-08-30T09:19:31.245295``), model_loaded, gpu_available. Always a 200 while the process
answers: a liveness check.

GET /ready: 200 once every engine this replica runs itself (embedded) is up, else 503 naming the models
still loading: a readiness check, so that a load balancer (Kubernetes' readinessProbe) sends no traffic to
a replica whose model is still loading. Remote engines do not count: every replica shares them, and a
request for a model whose engines are all down gets a 503 with Retry-After from any replica."""

from __future__ import annotations

import glob
from datetime import datetime
from functools import cache
from typing import Any

from litestar import Request, Response, get

from vlm_gateway.api import services, success
from vlm_gateway.schemas.openai import Health, Readiness


@cache
def gpu_available() -> bool:
    """An NVIDIA device on this machine (without importing torch into the gateway)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


@get("/health", opt={"public": True})
async def health(request: Request[Any, Any, Any]) -> Health:
    engines = services(request).engines.values()
    loaded = bool(engines) and all(engine.ready for engine in engines)
    return Health(status="ok" if loaded else "loading", timestamp=datetime.now().isoformat(),
                  model_loaded=loaded, gpu_available=gpu_available())


@get("/ready", opt={"public": True}, responses={
    200: success(Readiness, "Every engine this replica runs itself is up."),
    503: success(Readiness, "Some are still loading (``loading`` names their models).")})
async def ready(request: Request[Any, Any, Any]) -> Response[Readiness]:
    loading = sorted(name for name, engine in services(request).engines.items() if not engine.local_ready)
    return Response(Readiness(status="loading" if loading else "ready", loading=loading),
                    status_code=503 if loading else 200)
