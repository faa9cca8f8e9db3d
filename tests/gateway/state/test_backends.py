"""Every StateBackend primitive, run against both backends (in-process and the real Redis)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_gateway.state import MemoryState, RedisState, StateBackend, state_backend

LONG = 60.0  # a window that never slides during a test


def test_both_backends_implement_the_protocol() -> None:
    assert isinstance(MemoryState(), StateBackend)
    assert isinstance(RedisState(_FakeRegistering(), prefix="x:"), StateBackend)
    assert isinstance(state_backend(None), MemoryState)


class _FakeRegistering:
    def register_script(self, _lua: str) -> object:
        return object()


# --- sliding window ---------------------------------------------------------------------------

async def test_hit_admits_exactly_limit(backend) -> None:
    results = [await backend.hit("w", LONG, 3) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0, 0]
    assert results[-1].used == 3 and results[-1].limit == 3
    assert 0 < results[-1].retry_after_s <= LONG
    assert LONG - 1 < results[-1].reset_s <= LONG
    assert results[0].retry_after_s == 0


async def test_hit_with_cost(backend) -> None:
    assert (await backend.hit("w", LONG, 10, cost=3)).used == 3
    assert (await backend.hit("w", LONG, 10, cost=6)).used == 9
    denied = await backend.hit("w", LONG, 10, cost=3)
    assert not denied.allowed and denied.used == 9
    assert (await backend.hit("w", LONG, 10, cost=1)).allowed
    too_big = await backend.hit("other", LONG, 10, cost=11)
    assert not too_big.allowed and too_big.retry_after_s == pytest.approx(LONG)


async def test_window_slides(backend) -> None:
    assert (await backend.hit("w", 0.6, 2)).allowed
    await asyncio.sleep(0.3)
    assert (await backend.hit("w", 0.6, 2)).allowed
    denied = await backend.hit("w", 0.6, 2)
    assert not denied.allowed
    assert 0 < denied.retry_after_s <= 0.31  # the first entry ages out first
    await asyncio.sleep(denied.retry_after_s + 0.02)
    assert (await backend.hit("w", 0.6, 2)).allowed  # exactly when Retry-After said
    assert not (await backend.hit("w", 0.6, 2)).allowed  # the second entry still counts


async def test_window_empties_completely(backend) -> None:
    for _ in range(3):
        await backend.hit("w", 0.2, 3)
    await asyncio.sleep(0.25)
    fresh = await backend.peek("w", 0.2, 3)
    assert fresh.allowed and fresh.used == 0 and fresh.reset_s == 0


async def test_peek_records_nothing(backend) -> None:
    for _ in range(5):
        assert (await backend.peek("w", LONG, 1)).allowed
    await backend.hit("w", LONG, 1)
    full = await backend.peek("w", LONG, 1)
    assert not full.allowed and full.used == 1 and full.retry_after_s > 0


async def test_add_then_peek_counts_tokens(backend) -> None:
    await backend.add("t", 0.6, 500)
    await asyncio.sleep(0.3)
    await backend.add("t", 0.6, 500)
    await backend.add("t", 0.6, 0)  # nothing to record
    usage = await backend.peek("t", 0.6, 800)
    assert not usage.allowed and usage.used == 1000 and usage.remaining == 0
    assert 0 < usage.retry_after_s <= 0.31  # when the first 500 age out, 500 < 800
    assert usage.retry_after_s < usage.reset_s <= 0.6
    await asyncio.sleep(usage.retry_after_s + 0.02)
    again = await backend.peek("t", 0.6, 800)
    assert again.allowed and again.used == 500


async def test_windows_are_independent(backend) -> None:
    await backend.hit("a", LONG, 1)
    assert (await backend.hit("b", LONG, 1)).allowed


async def test_concurrent_hits_admit_exactly_limit(backend) -> None:
    results = await asyncio.gather(*(backend.hit("burst", LONG, 10) for _ in range(60)))
    assert sum(r.allowed for r in results) == 10


# --- leased slots -----------------------------------------------------------------------------

async def test_slots_up_to_limit(backend) -> None:
    assert await backend.acquire_slot("s", 2, LONG, "a")
    assert await backend.acquire_slot("s", 2, LONG, "b")
    assert not await backend.acquire_slot("s", 2, LONG, "c")
    assert await backend.acquire_slot("s", 2, LONG, "a")  # a holder keeps its own slot
    assert await backend.slots_in_use("s") == 2
    assert await backend.release_slot("s", "a")
    assert not await backend.release_slot("s", "a")  # idempotent
    assert not await backend.release_slot("s", "nobody")  # only a holder's own slot is ever removed
    assert await backend.slots_in_use("s") == 1
    assert await backend.acquire_slot("s", 2, LONG, "c")
    assert await backend.slots_in_use("other") == 0


async def test_unrenewed_lease_comes_back_after_ttl(backend) -> None:
    assert await backend.acquire_slot("s", 1, 0.3, "dead")
    assert not await backend.acquire_slot("s", 1, 0.3, "alive")
    await asyncio.sleep(0.35)
    assert await backend.slots_in_use("s") == 0
    assert await backend.acquire_slot("s", 1, 0.3, "alive")
    assert await renew(backend, "s", ["dead", "alive"], 0.3) == [False, True]  # the dead holder lost it for good
    assert await backend.slots_in_use("s") == 1  # and the renewal did not re-create it


async def renew(backend, key: str, holders: list[str], ttl: float) -> list[bool]:
    return await asyncio.to_thread(backend.renew_slots_blocking, key, holders, ttl)


async def test_renewed_lease_is_kept(backend) -> None:
    grant = await backend.acquire_slot("s", 1, 0.3, "a")
    assert grant.granted and grant.held == 1 and grant.lease_s == pytest.approx(0.3)
    assert await renew(backend, "s", ["a", "b"], LONG) == [True, False]  # b holds nothing to renew
    await asyncio.sleep(0.5)  # past the first lease: only the renewal keeps it
    refused = await backend.acquire_slot("s", 1, 0.3, "b")
    assert not refused and refused.held == 1
    assert await backend.release_slot("s", "a")
    assert await renew(backend, "s", ["a"], LONG) == [False]  # released: renewing never brings it back
    assert await backend.slots_in_use("s") == 0


async def test_concurrent_acquires_take_exactly_limit(backend) -> None:
    got = await asyncio.gather(*(backend.acquire_slot("s", 5, LONG, f"h{i}") for i in range(40)))
    assert sum(g.granted for g in got) == 5 and await backend.slots_in_use("s") == 5


# --- hash -------------------------------------------------------------------------------------

async def test_hash(backend) -> None:
    assert await backend.hash_get("h", "f") is None
    assert await backend.hash_all("h") == {} and await backend.hash_len("h") == 0
    await backend.hash_set("h", "f", b"one")
    await backend.hash_set("h", "g", b"two")
    await backend.hash_set("h", "f", b"uno")
    assert await backend.hash_get("h", "f") == b"uno"
    assert await backend.hash_all("h") == {"f": b"uno", "g": b"two"}
    assert await backend.hash_len("h") == 2


# --- Redis specifics ----------------------------------------------------------------------------

async def test_redis_keys_are_prefixed_and_expire(redis_client, prefix) -> None:
    state = RedisState(redis_client, prefix=prefix)
    await state.hit("rpm:k", 2.0, 5)
    await state.add("tpm:k", 2.0, 10)
    await state.acquire_slot("conc:k", 5, 3.0, "h")
    keys = sorted([k.decode() async for k in redis_client.scan_iter(match=prefix + "*")])
    assert keys == sorted(prefix + k for k in ["{rpm:k}", "{rpm:k}:sum", "{tpm:k}", "{tpm:k}:sum", "conc:k"])
    for key in keys:
        assert 0 < await redis_client.pttl(key) <= 4000, key


async def test_redis_stale_sum_is_ignored(redis_client, prefix) -> None:
    """A running sum left behind without its log (evicted, say) must not count."""
    state = RedisState(redis_client, prefix=prefix)
    await redis_client.set(prefix + "{w}:sum", 99)
    assert (await state.hit("w", LONG, 1)).used == 1


async def test_redis_with_decoded_responses(prefix) -> None:
    from redis.asyncio import Redis

    from tests.gateway.state.fixtures import REDIS_URL, redis_session

    async with redis_session(prefix):
        client = Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            state = RedisState(client, prefix=prefix)
            await state.hash_set("h", "f", b"v")
            assert await state.hash_get("h", "f") == b"v" and await state.hash_all("h") == {"f": b"v"}
            assert (await state.hit("w", LONG, 1)).allowed
        finally:
            await client.aclose()


# --- the in-process window against a brute-force model --------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.integers(0, 4)), max_size=40), st.integers(1, 8))
def test_memory_window_matches_brute_force(ops, limit) -> None:
    clock, window = _Clock(), 2.0
    state = MemoryState(clock)
    recorded: list[tuple[float, int]] = []
    for dt, cost in ops:
        clock.now += dt
        live = [(t, c) for t, c in recorded if t > clock.now - window]
        used = sum(c for _, c in live)
        result = asyncio.run(state.hit("k", window, limit, cost))
        assert result.allowed == (used + cost <= limit)
        if result.allowed and cost:
            recorded.append((clock.now, cost))
            used += cost
        assert result.used == used
        if not result.allowed and cost <= limit:  # retry_after is exactly when it would fit
            later = [(t, c) for t, c in live if t > clock.now + result.retry_after_s - window + 1e-7]
            assert sum(c for _, c in later) + cost <= limit
            sooner = [(t, c) for t, c in live if t > clock.now + result.retry_after_s - window - 1e-7]
            assert sum(c for _, c in sooner) + cost > limit
