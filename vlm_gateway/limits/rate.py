"""``Limiter``: the one object the pipeline asks "who is this?" and "may this request run now?".

    caller = await limiter.authenticate(request.headers.get("authorization"))   # 401 or Caller/None
    permit = await limiter.admit(caller, (model.id, *model.aliases))             # 404 / 429 or Permit
    try:
        ...                                    # run the request within permit.timeout_s
    finally:
        await permit.release(tokens=usage.total_tokens)

Limits per key (``Caller``): requests per minute (a sliding window), concurrent requests (leased
slots) and optionally tokens per minute (tokens recorded on release; a key at or over its TPM is refused
until enough ages out). A refused request consumes nothing. Every 429 carries ``Retry-After``,
``retry-after-ms`` (what the OpenAI SDK waits) and OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import msgspec

from vlm_gateway.errors import AuthenticationFailed, EngineUnavailable, GatewayError, ModelNotFound, RateLimited
from vlm_gateway.limits.keys import ApiKey, KeyStore
from vlm_gateway.limits.permit import Permit
from vlm_gateway.limits.settings import LimitSettings
from vlm_gateway.state import StateBackend, WindowResult

log = logging.getLogger("vlm_gateway.limits")
T = TypeVar("T")

MISSING_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
               "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")


class Caller(msgspec.Struct, frozen=True):
    """An authenticated API key, as the limiter needs it. A limit of 0 or less: no limit."""

    key_id: str
    name: str
    rpm: int
    concurrency: int
    tpm: int | None
    models: tuple[str, ...] | None

    @classmethod
    def of(cls, key: ApiKey) -> Caller:
        return cls(key.id, key.name, key.rpm, key.concurrency, key.tpm, key.models)


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``1m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def window_headers(kind: str, result: WindowResult) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{kind}`` for ``requests`` or ``tokens``."""
    return {f"x-ratelimit-limit-{kind}": str(result.limit),
            f"x-ratelimit-remaining-{kind}": str(result.remaining),
            f"x-ratelimit-reset-{kind}": duration(result.reset_s)}


def retry_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1) and ``retry-after-ms`` (what the OpenAI SDK prefers)."""
    return {"Retry-After": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


def _mask(token: str) -> str:
    return f"{token[:4]}{'*' * min(20, len(token) - 8)}{token[-4:]}" if len(token) >= 16 else "*" * min(len(token), 8)


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Limiter:
    """API keys and rate limits over a StateBackend; the same code for one process or many replicas."""

    def __init__(self, settings: LimitSettings, state: StateBackend, keys: KeyStore) -> None:
        self.settings = settings
        self.state = state
        self.keys = keys
        self._enabled = keys.config_keys > 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        """Whether any key exists (config file, or the store as last seen). ``authenticate`` always
        checks afresh; ``refresh`` updates this without a request."""
        return self._enabled

    async def refresh(self) -> bool:
        self._enabled = await self._call(self.keys.count()) > 0
        return self._enabled

    async def _call(self, op: Awaitable[T]) -> T:
        """A state operation, bounded in time; a failing backend is a 503, not a hang or an open door."""
        try:
            return await asyncio.wait_for(op, self.settings.state_timeout_s)
        except GatewayError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis down, timeout, ...
            log.warning("rate limiter state unavailable: %r", exc)
            raise EngineUnavailable("rate limiter state is unavailable; retry shortly", code="state_unavailable",
                                    headers={"Retry-After": "1"}) from exc

    async def authenticate(self, authorization: str | None) -> Caller | None:
        """The caller for an ``Authorization: Bearer …`` header; None when no keys exist at all."""
        token = _bearer(authorization)
        key = await self._call(self.keys.lookup(token)) if token else None
        if key is None:
            if not await self.refresh():
                return None
            if token is None:
                raise AuthenticationFailed(MISSING_KEY)
            raise AuthenticationFailed(f"Incorrect API key provided: {_mask(token)}.")
        self._enabled = True
        if key.revoked:
            raise AuthenticationFailed(f"The API key {_mask(token)} has been revoked.")  # type: ignore[arg-type]
        return Caller.of(key)

    async def admit(self, caller: Caller | None, model_ids: tuple[str, ...]) -> Permit:
        """A Permit for one request, or ModelNotFound (key not allowed this model) / RateLimited."""
        timeout_s = self.settings.request_timeout_s
        if caller is None:
            return Permit({}, timeout_s)
        if caller.models is not None and not set(model_ids) & set(caller.models):
            raise ModelNotFound(f"The model `{model_ids[0] if model_ids else ''}` does not exist or you do not "
                                "have access to it.", param="model")
        window = self.settings.window_s
        headers: dict[str, str] = {}
        if caller.tpm is not None and caller.tpm > 0:
            tokens = await self._call(self.state.peek(f"tpm:{caller.key_id}", window, caller.tpm))
            headers |= window_headers("tokens", tokens)
            if not tokens.allowed:
                raise self._limited(caller, "tokens per min (TPM)", tokens, headers)
        holder = uuid.uuid4().hex if caller.concurrency > 0 else None
        try:
            if holder is not None and not await self._call(self.state.acquire_slot(
                    f"conc:{caller.key_id}", caller.concurrency, self.settings.lease_ttl_s, holder)):
                holder = None
                if caller.rpm > 0:
                    headers |= window_headers("requests", await self._call(
                        self.state.peek(f"rpm:{caller.key_id}", window, caller.rpm)))
                retry = self.settings.concurrency_retry_after_s
                raise RateLimited(f"Too many concurrent requests for key {caller.name}: limit {caller.concurrency}. "
                                  f"Please try again in {duration(retry)}.", headers=headers | retry_headers(retry))
            if caller.rpm > 0:
                requests = await self._call(self.state.hit(f"rpm:{caller.key_id}", window, caller.rpm))
                headers |= window_headers("requests", requests)
                if not requests.allowed:
                    raise self._limited(caller, "requests per min (RPM)", requests, headers)
        except BaseException as exc:
            if holder is not None:  # refused (or cancelled) after taking a slot: give it back
                freed = self._spawn(self._finish(caller, holder, None, 0))
                if isinstance(exc, GatewayError):
                    await asyncio.shield(freed)  # freed before the 429 goes out
            raise
        if holder is None and not caller.tpm:
            return Permit(headers, timeout_s)
        return Permit(headers, timeout_s, spawn=self._spawn,
                      cleanup=lambda tokens, renewer: self._finish(caller, holder, renewer, tokens),
                      renew=(lambda: self._keep(caller, holder)) if holder else None)

    @staticmethod
    def _limited(caller: Caller, what: str, result: WindowResult, headers: dict[str, str]) -> RateLimited:
        return RateLimited(f"Rate limit reached for key {caller.name} on {what}: Limit {result.limit}, "
                           f"Used {result.used}, Requested 1. Please try again in {duration(result.retry_after_s)}.",
                           headers=headers | retry_headers(result.retry_after_s))

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _keep(self, caller: Caller, holder: str) -> None:
        """Renew the lease every ``renew_interval_s`` until cancelled (or the request overstays)."""
        s, key = self.settings, f"conc:{caller.key_id}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.request_timeout_s + s.lease_ttl_s
        while True:
            await asyncio.sleep(s.renew_interval_s)
            if loop.time() > deadline:
                log.warning("a request of key %s outlived its timeout; its slot lapses", caller.name)
                return
            try:
                if not await asyncio.wait_for(self.state.renew_slot(key, holder, s.lease_ttl_s), s.state_timeout_s):
                    log.warning("key %s: a slot's lease had lapsed; taking it again", caller.name)
                    await asyncio.wait_for(self.state.acquire_slot(key, caller.concurrency, s.lease_ttl_s, holder),
                                           s.state_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying; the lease covers a few misses
                log.warning("key %s: renewing a slot failed: %r", caller.name, exc)

    async def _finish(self, caller: Caller, holder: str | None, renewer: asyncio.Task[None] | None,
                      tokens: int) -> None:
        """Free the slot and record tokens; failures are logged (the lease frees the slot anyway)."""
        if renewer is not None:
            await asyncio.wait([renewer])  # no renewal may land after the release
        s = self.settings
        try:
            if holder is not None:
                await asyncio.wait_for(self.state.release_slot(f"conc:{caller.key_id}", holder), s.state_timeout_s)
            if tokens and caller.tpm:
                await asyncio.wait_for(self.state.add(f"tpm:{caller.key_id}", s.window_s, tokens), s.state_timeout_s)
        except Exception as exc:  # noqa: BLE001
            log.warning("key %s: releasing a request failed (its lease runs out by itself): %r", caller.name, exc)

    async def close(self) -> None:
        """Wait (briefly) for releases still in flight; call at shutdown."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.state_timeout_s)
