"""``Limiter``: the one object the pipeline asks "who is this?" and "may this request run now?".

    caller = await limiter.authenticate(request.headers.get("authorization"))   # 401 or Caller
    permit = await limiter.admit(caller, (model.id, *model.aliases))             # 404 / 429 or Permit
    try:
        ...                                    # run the request within permit.timeout_s
    finally:
        await permit.release(tokens=usage.total_tokens)

Limits per key (``Caller``): requests per minute (a sliding window), concurrent requests (leased
slots, kept by ``SlotKeeper``'s thread) and optionally tokens per minute (tokens recorded on release; a
key at or over its TPM is refused until enough ages out). A refused request consumes nothing. Without
keys every request is ``ANONYMOUS``: no limits, every model. Every 429 carries ``Retry-After``,
``retry-after-ms`` (what the OpenAI SDK waits) and OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

import msgspec

from vlm_gateway.errors import AuthenticationFailed, EngineUnavailable, GatewayError, ModelNotFound, RateLimited
from vlm_gateway.limits.keeper import Lease, SlotKeeper, trace
from vlm_gateway.limits.keys import ApiKey, KeyStore
from vlm_gateway.limits.permit import Permit
from vlm_gateway.limits.settings import LimitSettings
from vlm_gateway.state import StateBackend, WindowResult

log = logging.getLogger("vlm_gateway.limits")
T = TypeVar("T")

#: Set by the job worker for the job it runs: ``async with aside(): ...`` gives the job's worker slot to
#: other jobs for the while (a job whose key's limits hold it back must not hold back other keys' jobs).
ADMISSION_WAIT: ContextVar[Callable[[], contextlib.AbstractAsyncContextManager[None]] | None] = ContextVar(
    "admission_wait", default=None)

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

    @property
    def unlimited(self) -> bool:
        return self.rpm <= 0 and self.concurrency <= 0 and not (self.tpm and self.tpm > 0)


ANONYMOUS = Caller("anonymous", "anonymous", rpm=0, concurrency=0, tpm=None, models=None)
"""The caller of every request when no API key exists: no limits, every model."""


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``1m0s``."""
    ms = max(0, math.ceil(seconds * 1000))  # rounded once, before it is split: never "60s" or "1m60s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms / 1000, 60)
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


async def bounded(op: Awaitable[T], timeout_s: float) -> T:
    """``op``, or ``TimeoutError`` after ``timeout_s``. Unlike ``asyncio.wait_for``, a deadline that
    passed while the event loop itself stood still (a stall, not a slow state) first lets the loop run a
    few more steps: an answer that arrived during the stall is taken, not turned into a 503."""
    task = asyncio.ensure_future(op)
    try:
        await asyncio.wait({task}, timeout=timeout_s)
        for _ in range(20):  # the reply may be read but not yet handed up through the client's coroutines
            if task.done():
                break
            await asyncio.sleep(0)
    except BaseException:
        task.cancel()
        raise
    if not task.done():
        task.cancel()
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    return task.result()


def _mask(token: str) -> str:
    return f"{token[:4]}{'*' * min(20, len(token) - 8)}{token[-4:]}" if len(token) >= 16 else "*" * min(len(token), 8)


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Limiter:
    """API keys and rate limits over a StateBackend; the same code for one process or many replicas."""

    def __init__(self, settings: LimitSettings, state: StateBackend, keys: KeyStore,
                 lag_ms: Callable[[], float] = lambda: 0.0) -> None:
        self.settings = settings
        self.state = state
        self.keys = keys
        self.replica = uuid.uuid4().hex[:10]
        self.keeper = SlotKeeper(state, self.replica, settings.lease_ttl_s, settings.renew_interval_s, lag_ms)
        self._lag_ms = lag_ms
        self._enabled = keys.config_keys > 0
        self._tasks: set[asyncio.Task[None]] = set()
        if settings.trace_slots:
            trace.setLevel(logging.DEBUG)

    @property
    def enabled(self) -> bool:
        """Whether any key exists (config file, or the store as last seen). ``authenticate`` always
        checks afresh; ``refresh`` updates this without a request."""
        return self._enabled

    async def refresh(self) -> bool:
        if self.keys.state is None:  # config keys only: nothing to ask (and no task per request)
            self._enabled = self.keys.config_keys > 0
        else:
            self._enabled = await self._call(self.keys.count()) > 0
        return self._enabled

    async def _call(self, op: Awaitable[T]) -> T:
        """A state operation, bounded in time; a failing backend is a 503, not a hang or an open door."""
        try:
            return await bounded(op, self.settings.state_timeout_s)
        except GatewayError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis down, timeout, ...
            log.warning("rate limiter state unavailable: %r", exc)
            raise EngineUnavailable("rate limiter state is unavailable; retry shortly", code="state_unavailable",
                                    headers={"Retry-After": "1"}) from exc

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller for an ``Authorization: Bearer …`` header; ``ANONYMOUS`` when no keys exist at all."""
        token = _bearer(authorization)
        key = await self._call(self.keys.lookup(token)) if token else None
        if key is None:
            if not await self.refresh():
                return ANONYMOUS
            if token is None:
                raise AuthenticationFailed(MISSING_KEY)
            raise AuthenticationFailed(f"Incorrect API key provided: {_mask(token)}.")
        self._enabled = True
        if key.revoked:
            raise AuthenticationFailed(f"The API key {_mask(token)} has been revoked.")  # type: ignore[arg-type]
        return Caller.of(key)

    @staticmethod
    def check_model(caller: Caller, model_ids: tuple[str, ...]) -> None:
        """ModelNotFound (404) when the caller's key may not use this model."""
        if caller.models is not None and not set(model_ids) & set(caller.models):
            raise ModelNotFound(f"The model `{model_ids[0] if model_ids else ''}` does not exist or you do not "
                                "have access to it.", param="model")

    async def check_rate(self, caller: Caller) -> dict[str, str]:
        """Count one request against the key's requests/min (429 when over); its ``x-ratelimit-*``
        headers. What job submission pays: the job itself is admitted when it runs (``admit`` with
        ``count_request=False``)."""
        if caller.rpm <= 0:
            return {}
        requests = await self._call(self.state.hit(f"rpm:{caller.key_id}", self.settings.window_s, caller.rpm))
        headers = window_headers("requests", requests)
        if not requests.allowed:
            raise self._limited(caller, "requests per min (RPM)", requests, headers)
        return headers

    async def admit(self, caller: Caller, model_ids: tuple[str, ...], *, count_request: bool = True,
                    queued: bool = False) -> Permit:
        """A Permit for one request, or ModelNotFound (key not allowed this model) / RateLimited.

        Order: model allow-list, tokens/min, a concurrency slot, requests/min (``count_request``);
        a refusal after the slot was taken gives the slot back before the 429 goes out."""
        timeout_s = self.settings.request_timeout_s
        self.check_model(caller, model_ids)
        if caller.unlimited:
            return Permit({}, timeout_s)
        window = self.settings.window_s
        headers: dict[str, str] = {}
        if caller.tpm is not None and caller.tpm > 0:
            tokens = await self._call(self.state.peek(f"tpm:{caller.key_id}", window, caller.tpm))
            headers |= window_headers("tokens", tokens)
            if not tokens.allowed:
                raise self._limited(caller, "tokens per min (TPM)", tokens, headers)
        holder = f"{self.replica}:{uuid.uuid4().hex[:16]}" if caller.concurrency > 0 else None
        lease = None
        try:
            if holder is not None:
                lease = await self._take_slot(caller, holder, headers)
            if count_request:
                headers |= await self.check_rate(caller)
        except BaseException as exc:
            if holder is not None:  # refused (or cancelled) after taking a slot: give it back
                freed = self._spawn(self._finish(caller, holder, 0))
                if isinstance(exc, GatewayError):
                    await asyncio.shield(freed)  # freed before the 429 goes out
            raise
        if holder is None and not caller.tpm:
            return Permit(headers, timeout_s)
        charge = (lambda tokens: self._charge(caller, tokens, queued)) if caller.tpm and caller.tpm > 0 else None
        return Permit(headers, timeout_s, spawn=self._spawn,
                      cleanup=lambda tokens: self._finish(caller, holder, tokens),
                      lease=lease, revalidate=self.revalidate, charge=charge)

    async def admit_waiting(self, caller: Caller, model_ids: tuple[str, ...]) -> Permit:
        """A queued job's admission when it runs: concurrency and tokens/min (its requests/min was
        paid at submission). Over a limit it waits (``Retry-After``) instead of failing; the job's own
        timeout bounds the wait. It waits aside (``ADMISSION_WAIT``): its worker runs other keys' jobs
        meanwhile."""
        aside = ADMISSION_WAIT.get()
        while True:
            if await self._call(self.keys.revoked(caller.key_id)):  # (queued work outlives its key's revocation)
                raise AuthenticationFailed(f"The API key {caller.name} was revoked before this job ran.",
                                           code="key_revoked")
            try:
                return await self.admit(caller, model_ids, count_request=False, queued=True)
            except RateLimited as exc:
                wait_ms = int(exc.headers.get("retry-after-ms", "1000"))
                log.debug("job of key %s waits %d ms for admission: %s", caller.name, wait_ms, exc.message)
                async with aside() if aside is not None else contextlib.nullcontext():
                    await asyncio.sleep(min(max(wait_ms, 50), 60_000) / 1000)

    async def _acquire(self, key: str, holder: str, limit: int) -> tuple[bool, int]:
        """One atomic acquire (a holder that still holds its slot keeps it); (granted, held), traced."""
        grant = await self._call(self.state.acquire_slot(key, limit, self.settings.lease_ttl_s, holder))
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug("acquire key=%s holder=%s granted=%d held=%d/%d lease_s=%.3f lag_ms=%.0f", key, holder,
                        grant.granted, grant.held, limit, grant.lease_s, self._lag_ms())
        return grant.granted, grant.held

    async def revalidate(self, lease: Lease) -> None:
        """Prove a lease whose ``valid_until`` has passed (this replica stood still for a lease): take the
        slot again, atomically and within the limit, or stop the request (429 ``concurrency_slot_lost``)."""
        sent = time.monotonic()
        granted, held = await self._acquire(lease.key, lease.holder, lease.limit)
        if not granted:
            log.error("key %s: a request's slot lapsed while this replica stood still and %d other requests now "
                      "hold the key's %d slots: the request stops", lease.name, held, lease.limit)
            raise RateLimited(f"The request was stopped: its concurrency slot for key {lease.name} lapsed while "
                              f"the gateway stood still, and the key's {lease.limit} slots are now taken. Please "
                              "retry.", code="concurrency_slot_lost",
                              headers=retry_headers(self.settings.concurrency_retry_after_s))
        lease.valid_until = sent + self.settings.lease_ttl_s
        self.keeper.hold(lease)

    async def _take_slot(self, caller: Caller, holder: str, headers: dict[str, str]) -> Lease:
        key, s = f"conc:{caller.key_id}", self.settings
        sent = time.monotonic()
        granted, _ = await self._acquire(key, holder, caller.concurrency)
        if granted:
            lease = Lease(key, holder, caller.name, caller.concurrency, sent + s.lease_ttl_s,
                          sent + s.request_timeout_s + s.lease_ttl_s)
            self.keeper.hold(lease)
            return lease
        if caller.rpm > 0:
            headers |= window_headers("requests", await self._call(
                self.state.peek(f"rpm:{caller.key_id}", s.window_s, caller.rpm)))
        retry = s.concurrency_retry_after_s
        raise RateLimited(f"Too many concurrent requests for key {caller.name}: limit {caller.concurrency}. "
                          f"Please try again in {duration(retry)}.", headers=headers | retry_headers(retry),
                          code="concurrency_limit_exceeded")

    @staticmethod
    def _limited(caller: Caller, what: str, result: WindowResult, headers: dict[str, str],
                 requested: int = 1) -> RateLimited:
        return RateLimited(f"Rate limit reached for key {caller.name} on {what}: Limit {result.limit}, "
                           f"Used {result.used}, Requested {requested}. Please try again in "
                           f"{duration(result.retry_after_s)}.", headers=headers | retry_headers(result.retry_after_s))

    async def _charge(self, caller: Caller, tokens: int, queued: bool) -> dict[str, str]:
        """A prompt's ``tokens`` against the key's tokens/min, atomically: a 429 when they do not fit. A
        queued job, admitted by its wait, records them without a refusal (it must not fail on a 429)."""
        assert caller.tpm
        key, window = f"tpm:{caller.key_id}", self.settings.window_s
        if queued:
            await self._call(self.state.add(key, window, tokens))
            return window_headers("tokens", await self._call(self.state.peek(key, window, caller.tpm)))
        result = await self._call(self.state.hit(key, window, caller.tpm, cost=tokens))
        headers = window_headers("tokens", result)
        if tokens > caller.tpm:  # (no wait would help)
            raise RateLimited(f"Request too large for key {caller.name} on tokens per min (TPM): Limit "
                              f"{caller.tpm}, Requested {tokens}. Send a shorter prompt (fewer or smaller "
                              "images), or ask for a higher limit.", headers=headers)
        if not result.allowed:
            raise self._limited(caller, "tokens per min (TPM)", result, headers, tokens)
        return headers

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _finish(self, caller: Caller, holder: str | None, tokens: int) -> None:
        """Free the slot and record tokens; failures are logged (the lease frees the slot anyway)."""
        s = self.settings
        try:
            if holder is not None:
                key = f"conc:{caller.key_id}"
                self.keeper.drop(holder)  # no renewal after this; a renewal never re-creates a lease
                held = await bounded(self.state.release_slot(key, holder), s.state_timeout_s)
                if trace.isEnabledFor(logging.DEBUG):
                    trace.debug("release key=%s holder=%s held=%d lag_ms=%.0f", key, holder, held, self._lag_ms())
            if tokens and caller.tpm:
                await bounded(self.state.add(f"tpm:{caller.key_id}", s.window_s, tokens), s.state_timeout_s)
        except Exception as exc:  # noqa: BLE001
            log.warning("key %s: releasing a request failed (its lease runs out by itself): %r", caller.name, exc)

    async def close(self) -> None:
        """Wait (briefly) for releases still in flight, then stop renewing; call at shutdown."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.state_timeout_s)
        await asyncio.to_thread(self.keeper.close)
