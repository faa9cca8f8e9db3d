"""Fixtures shared by the state and limits tests: a real Redis (skipped when none answers, failed
under ``CI``) and the
``backend`` fixture parametrized over both StateBackends.

Each Redis-using test gets its own key prefix and deletes everything under it afterwards.
Redis address: ``$VLM_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from tests.helpers import TEST_REDIS_URL as REDIS_URL
from tests.helpers import no_redis
from vlm_gateway.state import MemoryState, RedisState


@contextlib.asynccontextmanager
async def redis_session(prefix: str) -> AsyncIterator[Redis]:
    """A client on the real Redis (the test is skipped when none answers); every key under ``prefix``
    is deleted afterwards."""
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no Redis here"
        await client.aclose()
        no_redis(exc)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest_asyncio.fixture
async def redis_client(prefix: str) -> AsyncIterator[Redis]:
    async with redis_session(prefix) as client:
        yield client


@pytest_asyncio.fixture
async def second_redis_client(redis_client: Redis) -> AsyncIterator[Redis]:
    """An independent client (its own connection pool) on the same Redis: a second replica."""
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, prefix: str):
    """Each StateBackend in turn: the test must pass on both."""
    if request.param == "memory":
        yield MemoryState()
        return
    async with redis_session(prefix) as client:
        yield RedisState(client, prefix=prefix)
