"""``LimitSettings``: API keys from the config file and the knobs of the rate limiter.

In the gateway's TOML (``Settings.limits``)::

    [limits]
    request_timeout_s = 30

    [[limits.keys]]            # one per key; `vlm-gateway keys create` prints this snippet
    name = "acme"
    hash = "3f7a…"             # sha256 hex of the secret; the secret itself is never stored
    rpm = 30
    concurrency = 5
    tpm = 100000               # optional: tokens per minute
    models = ["qwen2.5-vl"]    # optional: ids or aliases this key may use (absent: all)

A limit of 0 or less means "no limit" on that axis.
"""

from __future__ import annotations

import re

import msgspec

DEFAULT_RPM = 30
DEFAULT_CONCURRENCY = 5
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ConfigKey(msgspec.Struct, forbid_unknown_fields=True):
    """An API key declared in the config file (embedded default: no Redis needed)."""

    name: str
    hash: str
    rpm: int = DEFAULT_RPM
    concurrency: int = DEFAULT_CONCURRENCY
    tpm: int | None = None
    models: list[str] | None = None

    def __post_init__(self) -> None:
        self.hash = self.hash.strip().lower().removeprefix("sha256:")
        if not _SHA256_HEX.fullmatch(self.hash):
            raise ValueError(f"key {self.name!r}: hash must be the sha256 hex digest of the secret (64 hex digits)")
        for field, value in (("rpm", self.rpm), ("concurrency", self.concurrency), ("tpm", self.tpm)):
            if value is not None and value < 0:  # (a typo must not make an unlimited key: 0 says "no limit")
                raise ValueError(f"key {self.name!r}: {field} must be 0 (no limit) or more, not {value}")


class LimitSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Rate limiter and API key settings. Short windows/TTLs are for tests; the defaults are the
    published limits (a minute window, 30 s per request)."""

    keys: list[ConfigKey] = []
    request_timeout_s: float = 30.0  # a Permit's timeout_s: how long one request may run
    window_s: float = 60.0  # the rpm / tpm window
    lease_ttl_s: float = 30.0  # a concurrency slot whose holder stops renewing comes back after this
    renew_interval_s: float = 2.0  # how often a held slot's lease is renewed (by the keeper thread)
    concurrency_retry_after_s: float = 1.0  # Retry-After on a 429 for too many concurrent requests
    redis_prefix: str = "vlm:"  # namespace of every Redis key (one per gateway deployment)
    state_timeout_s: float = 2.0  # a state operation slower than this fails the request with 503
    trace_slots: bool = False  # log every slot acquire / renew / release (logger vlm_gateway.limits.slots)

    def __post_init__(self) -> None:
        for name in ("request_timeout_s", "window_s", "lease_ttl_s", "renew_interval_s", "state_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"limits.{name} must be positive")
        if self.renew_interval_s >= self.lease_ttl_s:
            raise ValueError("limits.renew_interval_s must be shorter than limits.lease_ttl_s")
        hashes = [key.hash for key in self.keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("limits.keys: the same hash appears twice")
