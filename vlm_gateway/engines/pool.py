"""A model's engine: a pool of servers, of any kinds, that the gateway treats as one ``Engine``.

A server (``vlm_gateway.engines.Server``) is one URL spoken to in one protocol: vLLM's token-in endpoint
(``VLLMServer``: remote servers, and the embedded one this gateway supervises) or OpenAI's chat API
(``OpenAIServer``: any OpenAI-compatible server, which renders the prompt itself). The pool owns what is
about the servers together:

- **Health.** Every ``HEALTH_INTERVAL_S`` each server is probed. A refused connection takes it out of
  rotation at once; a busy engine can be slow to answer, so only ``HEALTH_FAILURES_DOWN`` failed probes
  in a row do, or as many failed requests in a row (outlier ejection). It is back when a probe answers.
- **Slow start.** A server that comes back (it was up before) while others serve gets its share of
  requests gradually over ``slow_start_s``: routing sees it as loaded as ``1 / fraction`` of its real load
  (from 10 % of the way), so a cold engine is not handed a burst (Envoy's slow start mode).
- **Routing** (``vlm_gateway.routing``): to the server that holds the request's caches, within a load
  bound, by an owner table shared by the gateway's replicas when it has Redis.
- **Failover.** A server that refuses the connection, answers 503 or dies before the request's first
  output is left out and the request goes to the next one (each server at most once, all attempts within
  the request's one time limit). After the first output the request fails (``EngineCrashed``): the client
  has part of an answer.
- **Supervised processes** (the embedded vLLM) start and stop with the pool.

Each server's state is in ``vlm_gateway_engine_server_up{model, server}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from vlm_gateway import metrics
from vlm_gateway.engines import EngineDelta, EngineRequest, Server
from vlm_gateway.engines.errors import EngineCrashed, EngineDown, EngineUnreachable
from vlm_gateway.routing import Routing, choose
from vlm_gateway.routing.owners import MemoryOwners, Owners

log = logging.getLogger("vlm_gateway.engine")

HEALTH_INTERVAL_S = 2.0
HEALTH_FAILURES_DOWN = 3
RECHECK_INTERVAL_S = 0.5  # while no server is up, requests probe again at most this often
PROBE_FAILURES = {"refused": "connection refused", "down": "no answer of 200 to its health probe (an error status, a "
                  "timeout or a failed request)"}
SLOW_START_FLOOR = 0.1


class Supervised(Protocol):
    """A process the pool starts and stops with itself (``EmbeddedVLLM``), serving at ``url``."""

    url: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Member:
    """A server and what the pool knows of it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = server.url
        self.healthy = False
        self.in_flight = 0
        self.failed_probes = 0
        self.failed_requests = 0  # in a row
        self.max_model_len: int | None = None
        self.was_up = False  # it served before (a server's first start is no comeback)
        self.reported = False  # a server never up: its first failed probe was logged
        self.warming_since: float | None = None  # slow start: when it came back

    def load(self, slow_start_s: float) -> float:
        """Its requests in flight as routing sees them: more, while it warms up after coming back."""
        if self.warming_since is None:
            return self.in_flight
        fraction = (time.monotonic() - self.warming_since) / slow_start_s if slow_start_s > 0 else 1.0
        if fraction >= 1:
            self.warming_since = None
            return self.in_flight
        return (self.in_flight + 1) / max(fraction, SLOW_START_FLOOR) - 1


class EnginePool:
    """One model's servers as one ``Engine``."""

    def __init__(self, model: str, servers: Sequence[Server], *, routing: Routing = "affinity",
                 owners: Owners | None = None, request_timeout_s: float = 600.0, slow_start_s: float = 30.0,
                 supervised: Sequence[Supervised] = (), local: Sequence[str] = ()) -> None:
        """``supervised``: processes the pool starts and stops; ``local``: more servers this replica has
        started itself (a worker's engines, which the ``workers`` supervisor runs): both count for
        ``local_ready``."""
        if not servers:
            raise ValueError("an engine pool needs at least one server")
        self.model = model
        self.members = [Member(s) for s in servers]
        self._routing: Routing = routing
        self._owners = owners or MemoryOwners()
        self._request_timeout_s = request_timeout_s
        self._slow_start_s = slow_start_s
        self._supervised = list(supervised)
        self._local = [p.url for p in self._supervised] + list(local)
        self._monitor: asyncio.Task[None] | None = None
        self._recheck: asyncio.Future[None] | None = None  # the probe requests share while none is up
        self._rechecked_at = -math.inf
        for member in self.members:
            metrics.ENGINE_SERVER_UP.labels(model, member.url).set(0)
            member.reported = any(p.url == member.url for p in self._supervised)  # its supervisor logs its start

    @property
    def ready(self) -> bool:
        return any(m.healthy for m in self.members)

    @property
    def local_ready(self) -> bool:
        """Every server this gateway runs itself (embedded) is up: the replica can take traffic. Servers
        elsewhere are shared by every replica; while they are down a request gets a 503 with Retry-After."""
        return all(self.server_up(url) for url in self._local)

    @property
    def max_model_len(self) -> int | None:
        """The smallest context length the servers report (None until one has answered)."""
        return min((m.max_model_len for m in self.members if m.max_model_len), default=None)

    async def recheck(self) -> bool:
        """Probe every server now if none is up (one probe for all the requests asking at once, and none
        within ``RECHECK_INTERVAL_S`` of the last), rather than wait for the next periodic look."""
        if self.ready:
            return True
        if self._recheck is None and time.monotonic() - self._rechecked_at >= RECHECK_INTERVAL_S:
            self._recheck = asyncio.ensure_future(self.check_health())
            self._recheck.add_done_callback(self._rechecked)
        if self._recheck is not None:
            await asyncio.shield(self._recheck)
        return self.ready

    def _rechecked(self, _: asyncio.Future[None]) -> None:
        self._recheck, self._rechecked_at = None, time.monotonic()

    def server_up(self, url: str) -> bool:
        return any(m.healthy for m in self.members if m.url == url)

    async def start(self) -> None:
        for process in self._supervised:
            await process.start()
        await self.check_health()
        self._monitor = asyncio.create_task(self._watch_health(), name=f"health-{self.model}")

    async def close(self) -> None:
        if self._monitor:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for process in self._supervised:
            await process.close()

    # --- health -----------------------------------------------------------------------------------

    async def check_health(self) -> None:
        await asyncio.gather(*(self._probe(m) for m in self.members))

    async def _probe(self, member: Member) -> None:
        result = await member.server.probe()
        ok = result == "up"
        member.failed_probes = 0 if ok else member.failed_probes + 1
        if not ok and not member.was_up and not member.reported:  # else a server never up is never heard of
            member.reported = True
            log.warning("engine %s for %s is not up: %s; it is probed every %.0f s and used once it answers",
                        member.url, self.model, PROBE_FAILURES.get(result, result), HEALTH_INTERVAL_S)
        if ok:
            member.failed_requests = 0
        if ok and (not member.healthy or member.max_model_len is None):  # (re)started: read its limit
            member.max_model_len = await member.server.read_max_model_len()
            if member.max_model_len is None:
                log.warning("engine %s did not report its context length (max_model_len)", member.url)
        healthy = ok or (member.healthy and result != "refused" and member.failed_probes < HEALTH_FAILURES_DOWN)
        self._set_health(member, healthy)

    def _set_health(self, member: Member, healthy: bool) -> None:
        if healthy == member.healthy:
            return
        back = healthy and member.was_up and any(m.healthy for m in self.members if m is not member)
        member.healthy = healthy
        member.was_up = member.was_up or healthy
        member.warming_since = time.monotonic() if back and self._slow_start_s > 0 else None
        metrics.ENGINE_SERVER_UP.labels(self.model, member.url).set(1 if healthy else 0)
        log.info("engine %s for %s is %s", member.url, self.model, "up" if healthy else "down")

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self.check_health()

    def _failed(self, member: Member, refused: bool = False) -> None:
        member.failed_requests += 1
        if refused or member.failed_requests >= HEALTH_FAILURES_DOWN:
            self._set_health(member, False)

    # --- routing and failover -----------------------------------------------------------------------

    async def _pick(self, affinity: str | None, tried: set[str]) -> Member:
        candidates = [m for m in self.members if m.healthy and m.url not in tried]
        if not candidates:
            raise EngineDown("no engine is up for this model yet; retry shortly", retry_after_s=5)
        routed = self._routing == "affinity" and affinity is not None and len(candidates) > 1
        owner = await self._owners.owner(affinity) if routed else None  # type: ignore[arg-type]
        member, decision = choose(candidates, affinity, lambda m: m.load(self._slow_start_s), lambda m: m.url,
                                  self._routing, owner=owner, owned=lambda m: self._owners.owned(m.url))
        if routed and decision in ("new", "moved"):
            winner = await self._owners.claim(affinity, member.url, replace=decision == "moved")  # type: ignore[arg-type]
            member = next((m for m in candidates if m.url == winner), member)  # another replica placed it first
        return member

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """The request's output from one server of the pool; before its first output, a server that is
        down hands the request to the next."""
        tried: set[str] = set()
        total = min(request.timeout_s or math.inf, self._request_timeout_s or math.inf)  # the tighter limit
        deadline = time.monotonic() + total  # every attempt within the request's one time limit
        while True:
            member = await self._pick(request.affinity, tried)
            started = False
            member.in_flight += 1
            try:
                # closed (the engine request aborted) as soon as the caller stops reading
                async with contextlib.aclosing(member.server.generate(request, deadline, total)) as deltas:
                    async for delta in deltas:
                        started = True
                        yield delta
                member.failed_requests = 0
                return
            except EngineDown as exc:
                self._failed(member, refused=isinstance(exc, EngineUnreachable))
                if started:
                    raise EngineCrashed(f"the engine failed mid-answer: {exc.message}") from exc
                tried.add(member.url)
                if not any(m.healthy and m.url not in tried for m in self.members):
                    log.warning("engine %s failed before the first output (%s); no other engine is up",
                                member.url, exc.message)
                    raise EngineDown(f"no engine for {self.model} could take the request; retry shortly",
                                     retry_after_s=5) from exc  # (the engines' addresses stay in the log)
                metrics.FAILOVERS.inc()
                log.warning("engine %s failed before the first output (%s); trying another", member.url,
                            exc.message)
            except EngineCrashed:
                self._failed(member)
                raise
            finally:
                member.in_flight -= 1
