"""The in-process cache pieces: LRU bounds and TTL, single-flight sharing and cancellation."""

from __future__ import annotations

import asyncio

import pytest

from vlm_gateway.cache import LRUCache, SingleFlight, Stats


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lru_evicts_least_recently_used():
    cache: LRUCache[str, bytes] = LRUCache(2, 60)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.put("c", b"3")
    assert cache.get("b") is None and cache.get("a") == b"1" and cache.get("c") == b"3"


def test_lru_byte_bound_and_oversized_values():
    cache: LRUCache[str, bytes] = LRUCache(100, 60, max_bytes=10)
    cache.put("a", b"12345")
    cache.put("b", b"12345")
    cache.put("c", b"1")
    assert cache.get("a") is None and cache.total_bytes == 6
    cache.put("huge", b"x" * 11)
    assert cache.get("huge") is None and cache.total_bytes == 6
    cache.put("b", b"1")  # replacing updates the size
    assert cache.total_bytes == 2


def test_lru_discard():
    cache: LRUCache[str, bytes] = LRUCache(10, 60)
    cache.put("a", b"123")
    cache.discard("a")
    cache.discard("never there")
    assert cache.get("a") is None and len(cache) == 0 and cache.total_bytes == 0


def test_lru_ttl():
    clock = Clock()
    cache: LRUCache[str, bytes] = LRUCache(10, 5, clock=clock)
    cache.put("a", b"1")
    clock.now = 4.9
    assert cache.get("a") == b"1"
    clock.now = 5.0
    assert cache.get("a") is None and len(cache) == 0 and cache.total_bytes == 0


def test_lru_disabled():
    for cache in (LRUCache(0, 60), LRUCache(10, 0)):
        cache.put("a", b"1")
        assert cache.get("a") is None


async def test_single_flight_shares_one_run():
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.02)
        return 7

    got = await asyncio.gather(*(flight.run("k", work) for _ in range(10)))
    assert runs == 1 and [v for v, _ in got] == [7] * 10 and sum(shared for _, shared in got) == 9
    assert len(flight) == 0
    await flight.run("k", work)  # finished runs are not remembered
    assert runs == 2


async def test_single_flight_survives_a_cancelled_caller():
    flight: SingleFlight[str, int] = SingleFlight()
    started = asyncio.Event()

    async def work() -> int:
        started.set()
        await asyncio.sleep(0.05)
        return 1

    first = asyncio.ensure_future(flight.run("k", work))
    await started.wait()
    second = asyncio.ensure_future(flight.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == (1, True)
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_single_flight_delivers_errors_to_everyone():
    flight: SingleFlight[str, int] = SingleFlight()

    async def work() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    got = await asyncio.gather(*(flight.run("k", work) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(e, ValueError) for e in got)


def test_stats_snapshot():
    stats = Stats()
    stats["downloads"] += 2
    assert stats.snapshot() == {"downloads": 2}
