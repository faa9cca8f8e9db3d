"""Fixtures for the file store tests: ``make_store`` builds stores on each backend in turn (the disk in
``tmp_path``; the real Redis under a key prefix of the test's own, deleted afterwards)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio

from tests.gateway.state.fixtures import REDIS_URL, prefix, redis_session  # noqa: F401
from vlm_gateway.files import FileSettings, FileStore, build_file_store
from vlm_gateway.limits.rate import Caller
from vlm_gateway.settings import ImageSettings, Settings

ALICE = Caller("key_alice", "alice", rpm=0, concurrency=0, tpm=None, models=None)
BOB = Caller("key_bob", "bob", rpm=0, concurrency=0, tpm=None, models=None)

StoreFactory = Callable[..., FileStore]


@pytest_asyncio.fixture(params=["disk", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path, prefix: str) -> AsyncIterator[StoreFactory]:  # noqa: F811
    """``make_store(images=ImageSettings(...), **files)``: a FileStore as the app builds it; every store of one
    test shares one directory / one Redis prefix (as replicas would)."""
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_session(prefix)) if request.param == "redis" else None
        stores: list[FileStore] = []

        def make(images: ImageSettings | None = None, **files) -> FileStore:
            settings = Settings(redis_url=REDIS_URL if redis is not None else "",
                                images=images or ImageSettings(),
                                files=FileSettings(backend=request.param, dir=str(tmp_path / "files"),
                                                   key_prefix=f"{prefix}{{files}}:", **files))
            stores.append(build_file_store(settings, redis))
            return stores[-1]

        make.kind = request.param  # type: ignore[attr-defined]
        yield make
        for store in stores:
            await store.close()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
