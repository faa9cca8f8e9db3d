"""API keys and rate limits (30 requests/min, 5 concurrent, 30 s per request by default).

``Limiter`` is what the pipeline uses; ``KeyStore`` reads keys from the config file and the state
backend; ``LimitSettings`` is the ``[limits]`` config section; ``vlm_gateway.limits.cli`` is
``vlm-gateway keys …``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use: ``vlm_gateway.settings`` imports ``vlm_gateway.limits.settings``, and that
# must not pull the limiter and its Redis client into every process (``vlm-gateway render``).
_WHERE = {
    "ApiKey": "keys", "KeyStore": "keys", "hash_secret": "keys", "new_key": "keys", "toml_snippet": "keys",
    "Permit": "permit", "Caller": "rate", "Limiter": "rate", "ConfigKey": "settings", "LimitSettings": "settings",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
