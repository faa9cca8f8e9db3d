"""GET /health in the seeds' shape: status, timestamp (ISO 8601, local time, as the FastVLM Vision API
sends it: ``2025-08-30T09:19:31.245295``), model_loaded, gpu_available."""

from __future__ import annotations

import glob
from datetime import datetime
from functools import cache
from typing import Any

from litestar import Request, get

from vlm_gateway.api import services
from vlm_gateway.schemas.openai import Health


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
