"""API keys and rate limits (30 requests/min, 5 concurrent, 30 s per request by default).

``Limiter`` is what the pipeline uses; ``KeyStore`` reads keys from the config file and the state
backend; ``LimitSettings`` is the ``[limits]`` config section; ``gateway.limits.cli`` is
``vlm-gateway keys …``.
"""

from __future__ import annotations

from gateway.limits.keys import ApiKey, KeyStore, hash_secret, new_key, toml_snippet
from gateway.limits.permit import Permit
from gateway.limits.rate import Caller, Limiter
from gateway.limits.settings import ConfigKey, LimitSettings

__all__ = ["ApiKey", "Caller", "ConfigKey", "KeyStore", "LimitSettings", "Limiter", "Permit", "hash_secret",
           "new_key", "toml_snippet"]
