"""Fixtures for the job queue tests: both backends (memory, and the real Redis under a unique key
prefix per test, deleted afterwards), tiny timings, and a local webhook receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

from tests.helpers import TEST_REDIS_URL, no_redis
from vlm_gateway.jobs import MemoryJobQueue, RedisJobQueue
from vlm_gateway.jobs.settings import JobSettings, WebhookSettings

REDIS_URL = TEST_REDIS_URL
SECRET = "test-secret"


def fast_settings(**over) -> JobSettings:
    """Timings small enough for a fast suite, with room for a loaded machine: a worker may miss nine
    heartbeats in a row before its job is reclaimed (visibility 1 s, heartbeat 0.1 s, reclaim every 0.1 s)."""
    hook = dict(secret=SECRET, attempts=6, base_delay_s=0.02, max_delay_s=0.5, timeout_s=2, allow_loopback=True)
    webhook = WebhookSettings(**{**hook, **over.pop("webhook", {})})
    base = dict(key_prefix=f"test:jobs:{{{uuid.uuid4().hex}}}:", visibility_timeout_s=1.0, heartbeat_s=0.1,
                reclaim_interval_s=0.1, poll_s=0.05, result_ttl_s=30.0, concurrency=2, webhook=webhook)
    return JobSettings(**{**base, **over})


async def redis_client():
    """A client of the test Redis, or a skip when there is none."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        await client.aclose()
        no_redis(exc, REDIS_URL)
    return client


class QueueFactory:
    """Builds queues of one backend over one (per-test) key prefix, as several replicas would."""

    def __init__(self, kind: str, redis) -> None:
        self.kind = kind
        self.redis = redis
        self.prefixes: set[str] = set()
        self._memory: dict[str, MemoryJobQueue] = {}

    def __call__(self, settings: JobSettings, vet=None):
        self.prefixes.add(settings.key_prefix)
        if self.kind == "redis":
            return RedisJobQueue(self.redis, settings, vet)
        # one process: "replicas" share the same in-memory queue
        queue = self._memory.get(settings.key_prefix)
        if queue is None:
            queue = self._memory[settings.key_prefix] = MemoryJobQueue(settings, vet)
        return queue

    async def cleanup(self) -> None:
        if self.redis is None:
            return
        for prefix in self.prefixes:
            keys = [key async for key in self.redis.scan_iter(match=prefix + "*")]
            if keys:
                await self.redis.delete(*keys)


@pytest_asyncio.fixture(params=["memory", "redis"])
async def make_queue(request):
    redis = await redis_client() if request.param == "redis" else None
    factory = QueueFactory(request.param, redis)
    yield factory
    await factory.cleanup()
    if redis is not None:
        await redis.aclose()


@pytest.fixture
def settings() -> JobSettings:
    return fast_settings()


@pytest_asyncio.fixture
async def queue(make_queue, settings):
    q = make_queue(settings)
    await q.start()
    yield q
    await q.close()


@pytest_asyncio.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


class Hook(msgspec.Struct):
    at: float
    headers: CIMultiDict  # case-insensitive, as HTTP header names are
    body: bytes


class Receiver:
    """A webhook endpoint that answers ``fail_first`` requests with 500 (or ``status`` forever)."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self.fail_first = 0
        self.status = 200
        self.port = 0
        self.arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ok(self) -> list[Hook]:
        return [h for i, h in enumerate(self.hooks) if i >= self.fail_first and self.status == 200]

    async def handle(self, request: web.Request) -> web.Response:
        self.hooks.append(Hook(time.monotonic(), CIMultiDict(request.headers), await request.read()))
        self.arrived.set()
        if len(self.hooks) <= self.fail_first:
            return web.Response(status=500)
        return web.Response(status=self.status)

    async def wait(self, count: int, timeout_s: float = 5.0) -> None:
        async def until() -> None:
            while len(self.hooks) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(until(), timeout_s)


@pytest_asyncio.fixture
async def receiver():
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hook", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state
    await runner.cleanup()


async def eventually(check, timeout_s: float = 5.0, step_s: float = 0.01):
    """Poll the async ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s (last: {value!r})")
        await asyncio.sleep(step_s)
