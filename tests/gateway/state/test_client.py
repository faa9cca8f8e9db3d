"""The app's Redis client (``vlm_gateway.state.redis_client``): more concurrent commands than its pool has
connections wait for one, rather than failing (redis-py's default pool raises MaxConnectionsError)."""

from __future__ import annotations

import asyncio

from tests.helpers import TEST_REDIS_URL, no_redis
from vlm_gateway.state import REDIS_MAX_CONNECTIONS, redis_client


async def test_more_commands_than_connections_wait_for_one() -> None:
    client = redis_client(TEST_REDIS_URL)
    try:
        try:
            await client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "no Redis here"
            no_redis(exc)
        # a blocking command holds its connection until it returns, so every one of these needs its own
        many = REDIS_MAX_CONNECTIONS + 44
        replies = await asyncio.gather(*(client.blpop(["vlmtest:client:never"], timeout=0.2) for _ in range(many)))
        assert replies == [None] * many
    finally:
        await client.aclose()


def test_client_is_made_from_the_url() -> None:
    kwargs = redis_client("redis://127.0.0.1:6390/3").connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == ("127.0.0.1", 6390, 3, 30)
