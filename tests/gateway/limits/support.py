"""Helpers for the limits tests: limiters with short windows and leases, keys made in one call."""

from __future__ import annotations

from vlm_gateway.limits import Caller, ConfigKey, KeyStore, Limiter, LimitSettings
from vlm_gateway.state import StateBackend

FAST = {"window_s": 60.0, "lease_ttl_s": 2.0, "renew_interval_s": 0.5, "concurrency_retry_after_s": 0.5}
SHORT_LEASE = {"lease_ttl_s": 1.0, "renew_interval_s": 0.2}  # for the tests about a lease that lapses


def make_limiter(state: StateBackend, config_keys: list[ConfigKey] | None = None, **overrides) -> Limiter:
    settings = LimitSettings(keys=config_keys or [], **{**FAST, **overrides})
    return Limiter(settings, state, KeyStore(state, settings.keys))


async def make_caller(limiter: Limiter, **key) -> tuple[str, Caller]:
    """Create a stored key and authenticate with it."""
    secret, _ = await limiter.keys.create(key.pop("name", "test"), **key)
    caller = await limiter.authenticate(f"Bearer {secret}")
    assert caller is not None
    return secret, caller
