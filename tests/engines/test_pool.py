"""A remote engine pool against scripted stand-ins of vLLM's token-in endpoint: cache-affinity routing
within a load bound, and failover before the first output (a refused connection, a 503, a server that
dies) but never after it."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections import Counter

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from tests.engines.test_vllm_remote import FakeVLLM, pool_of, serve_fake
from tests.helpers import TEST_REDIS_URL, require_redis
from vlm_gateway import metrics
from vlm_gateway.engines import EngineRequest, SamplingParams
from vlm_gateway.engines import pool as pool_module
from vlm_gateway.engines.errors import EngineCrashed, EngineDown
from vlm_gateway.routing import _score, affinity_key, choose
from vlm_gateway.routing.owners import MemoryOwners, RedisOwners


class PoolServer(FakeVLLM):
    """``mode``: ok, bad (HTTP ``status``), die_early (connection closed before any answer), die_mid (after
    the first chunk), slow (holds the stream open)."""

    async def generate(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "die_early":
            await request.read()
            self.bodies.append({})
            request.transport.close()
            raise web.HTTPInternalServerError()
        if self.mode == "die_mid":
            body = await request.json()
            self.bodies.append(body)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b'data: {"choices": [{"index": 0, "text": "Hel", "token_ids": [5]}]}\n\n')
            request.transport.close()
            return resp
        return await super().generate(request)


@pytest.fixture
async def pool():
    """Three servers (A, B, C) in one pool."""
    fakes, runners, urls = [], [], []
    for _ in range(3):
        fake = PoolServer()
        runner, url = await serve_fake(fake)
        fakes.append(fake)
        runners.append(runner)
        urls.append(url)
    async with aiohttp.ClientSession() as session:
        client = pool_of(urls, session)
        await client.start()
        yield dict(zip(urls, fakes, strict=True)), client, dict(zip(urls, runners, strict=True))
        await client.close()
    for runner in runners:
        await runner.cleanup()


def request(affinity: str | None, request_id: str = "r1") -> EngineRequest:
    return EngineRequest(request_id, [1, 2, 3], [], SamplingParams(max_tokens=2), affinity=affinity)


def ranked(urls, key: str) -> list[str]:
    """The servers in the order ``choose`` prefers them for ``key`` (all idle)."""
    return sorted(urls, key=lambda u: _score(key, u), reverse=True)


def served_by(fakes: dict[str, PoolServer], request_id: str) -> list[str]:
    return [url for url, fake in fakes.items() for body in fake.bodies if body.get("request_id") == request_id]


async def test_a_conversation_stays_on_its_server_and_load_spreads(pool) -> None:
    """20 five-turn conversations, each resending its own image (its key), 8 at a time: every turn after the
    first lands where the first did, and no server takes more than 60 % of the requests."""
    fakes, client, _ = pool
    first: dict[int, str] = {}
    stayed = turns = 0
    gate = asyncio.Semaphore(8)

    async def conversation(c: int) -> None:
        nonlocal stayed, turns
        key = affinity_key([f"{c:064x}"], [1, 2, 3])
        for turn in range(5):
            async with gate:
                rid = f"c{c}-t{turn}"
                assert [d async for d in client.generate(request(key, rid))]
                where, = served_by(fakes, rid)
            if turn == 0:
                first[c] = where
            else:
                turns += 1
                stayed += where == first[c]

    await asyncio.gather(*(conversation(c) for c in range(20)))
    assert stayed / turns >= 0.95, (stayed, turns)
    counts = Counter(url for url, fake in fakes.items() for _ in fake.bodies)
    assert sum(counts.values()) == 100 and max(counts.values()) <= 60, counts


def test_a_key_stays_with_its_owner_until_it_is_over_the_load_bound() -> None:
    loads = {"a": 9, "b": 0, "c": 1}
    # mean with this request (9 + 0 + 1 + 1) / 3 = 3.67: cap max(ceil(1.25 · 3.67), 4 + 4) = 8 < 9 + 1
    assert choose(list(loads), "k", loads.get, str, owner="a") == ("b", "spilled")
    lighter = {"a": 6, "b": 0, "c": 1}.get  # mean 2.67: cap max(4, 3 + 4) = 7, and 6 + 1 fits: its owner
    assert choose(list(loads), "k", lighter, str, owner="a") == ("a", "affinity")
    assert choose(list(loads), "k", lighter, str, owner="a", slack=0) == ("b", "spilled")  # no slack: cap 4
    assert choose(list(loads), None, loads.get, str, owner="a") == ("b", "least_loaded")  # no key
    assert choose(list(loads), "k", lighter, str, "least_loaded", owner="a") == ("b", "least_loaded")


def test_a_new_key_goes_to_the_server_owning_fewest_keys_within_the_bound() -> None:
    idle = {"a": 0, "b": 0, "c": 0}.get
    owned = {"a": 3, "b": 1, "c": 1}.get
    key = next(f"k{i}" for i in range(1000) if ranked("bc", f"k{i}")[0] == "c")
    assert choose(list("abc"), key, idle, str, owned=owned) == ("c", "new")  # b and c tie: rendezvous
    assert choose(list("abc"), key, idle, str, owner="gone", owned=owned) == ("c", "moved")
    busy_c = {"a": 0, "b": 0, "c": 9}.get  # c over the bound
    assert choose(list("abc"), key, busy_c, str, owned=owned) == ("b", "new")


async def test_the_owner_table_is_shared_through_redis() -> None:
    """Two replicas' tables on one Redis: a key placed by one is found by the other; a new key claimed by
    both at once keeps the first claim."""
    require_redis().close()  # or skip (fail under CI)
    redis = Redis.from_url(TEST_REDIS_URL)
    prefix = f"vlmtest-{uuid.uuid4().hex[:8]}:route:m:"
    a, b = RedisOwners(redis, prefix), RedisOwners(redis, prefix)
    try:
        assert await a.owner("img:x") is None
        assert await a.claim("img:x", "http://e1", replace=False) == "http://e1"
        assert await b.owner("img:x") == "http://e1"
        assert await b.claim("img:x", "http://e2", replace=False) == "http://e1"  # a claimed it first
        assert await b.claim("img:x", "http://e2", replace=True) == "http://e2"  # its owner left: moved
        assert await a.owner("img:x") == "http://e2"
        assert a.owned("http://e1") == 1 and b.owned("http://e2") == 1 and b.owned("http://e1") == 0
        assert 0 < await redis.ttl(prefix + "img:x") <= 3600
    finally:
        await redis.delete(prefix + "img:x")
        await redis.aclose()


async def test_the_memory_owner_table_forgets_its_oldest_keys() -> None:
    table = MemoryOwners(capacity=2)
    for key, server in [("k1", "a"), ("k2", "b"), ("k3", "a")]:
        await table.claim(key, server, replace=False)
    assert await table.owner("k1") is None and await table.owner("k3") == "a"
    assert table.owned("a") == 1 and table.owned("b") == 1


@pytest.mark.parametrize("failure", ["refused", "503", "die_early"])
async def test_a_server_that_fails_before_the_first_output_hands_the_request_on(pool, failure) -> None:
    fakes, client, runners = pool
    key = "img:" + "ab" * 32
    preferred, second, _ = ranked(fakes, key)
    if failure == "refused":
        await runners[preferred].cleanup()  # nothing listens there any more
    elif failure == "503":
        fakes[preferred].mode, fakes[preferred].status = "bad", 503
    else:
        fakes[preferred].mode = "die_early"
    before = metrics.FAILOVERS._value.get()
    deltas = [d async for d in client.generate(request(key))]
    assert "".join(d.text for d in deltas) == "Hello"
    assert metrics.FAILOVERS._value.get() == before + 1
    assert sorted(served_by(fakes, "r1")) == sorted([preferred, second] if failure == "503" else [second])


async def test_a_server_that_dies_after_the_first_output_fails_the_request(pool) -> None:
    fakes, client, _ = pool
    key = "img:" + "cd" * 32
    preferred, *_ = ranked(fakes, key)
    fakes[preferred].mode = "die_mid"
    got = []
    with pytest.raises(EngineCrashed, match="mid-answer"):
        async for delta in client.generate(request(key)):
            got.append(delta.text)
    assert got == ["Hel"]
    assert sum(len(f.bodies) for f in fakes.values()) == 1  # not sent anywhere else


async def test_every_server_down_is_engine_down(pool) -> None:
    fakes, client, _ = pool
    for fake in fakes.values():
        fake.mode, fake.status = "bad", 503
    with pytest.raises(EngineDown):
        [d async for d in client.generate(request("txt:x"))]
    assert sum(len(f.bodies) for f in fakes.values()) == 3  # each tried once


async def test_repeated_failures_take_a_server_out_until_its_health_answers(pool) -> None:
    fakes, client, _ = pool
    key = "img:" + "ef" * 32
    url = ranked(fakes, key)[0]
    server = next(m for m in client.members if m.url == url)
    fakes[url].mode, fakes[url].status = "bad", 500
    for k in range(3):
        assert server.healthy
        with pytest.raises(EngineCrashed):  # an engine error is not retried elsewhere (it may be the request's)
            [d async for d in client.generate(request(key, f"x{k}"))]
    assert not server.healthy  # three in a row: out of rotation
    assert [d async for d in client.generate(request(key, "y"))] and served_by(fakes, "y") != [url]
    await client.check_health()  # /health answers: back in rotation
    assert server.healthy and server.failed_requests == 0


async def test_a_server_back_in_rotation_warms_up_before_taking_its_share(pool) -> None:
    """Slow start: a server that was down and answers again looks loaded (1 / fraction of the way) until
    ``slow_start_s`` has passed, so least-loaded routing leaves it alone at first; a server's first start
    at the pool's start is no comeback."""
    fakes, client, _ = pool
    assert all(m.warming_since is None for m in client.members)  # all came up together
    back, *others = client.members
    client._set_health(back, False)
    assert metrics.ENGINE_SERVER_UP.labels("m", back.url)._value.get() == 0
    await client.check_health()  # its /health answers: back, warming up
    assert back.healthy and back.warming_since is not None
    assert metrics.ENGINE_SERVER_UP.labels("m", back.url)._value.get() == 1
    assert back.load(30.0) == pytest.approx(9, abs=0.1)  # idle, seen as 9 in flight (10 % of the way)
    for k in range(4):  # idle pool: every request goes elsewhere
        assert [d async for d in client.generate(request(None, f"w{k}"))]
        assert served_by(fakes, f"w{k}") != [back.url]
    back.warming_since -= 15.0  # half way: idle counts as 1
    assert back.load(30.0) == pytest.approx(1, abs=0.1)
    back.warming_since -= 15.0  # done
    assert back.load(30.0) == 0 and back.warming_since is None


class StartingServer(PoolServer):
    """A server whose /health answers 503 until ``up`` is set (an engine still loading), counting looks."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.looks = False, 0

    async def health(self, request: web.Request) -> web.Response:
        self.looks += 1
        return web.Response(status=200 if self.up else 503)


async def test_a_request_looks_again_before_it_is_refused_for_an_engine_not_up(monkeypatch) -> None:
    """An engine that came up since the pool's last periodic look serves the next request at once (with
    several workers, the one that answered /health may not be the one a request lands on); requests asking
    together share one look, and while it stays down they look at most every RECHECK_INTERVAL_S."""
    monkeypatch.setattr(pool_module, "HEALTH_INTERVAL_S", 3600)  # no periodic look during the test
    monkeypatch.setattr(pool_module, "RECHECK_INTERVAL_S", 3600)
    fake = StartingServer()
    runner, url = await serve_fake(fake)
    try:
        async with aiohttp.ClientSession() as session:
            client = pool_of([url], session)
            await client.start()
            assert not client.ready and fake.looks == 1
            assert await asyncio.gather(*(client.recheck() for _ in range(5))) == [False] * 5
            assert fake.looks == 2  # one look for the five
            assert not await client.recheck() and fake.looks == 2  # too soon to look again
            fake.up = True
            monkeypatch.setattr(pool_module, "RECHECK_INTERVAL_S", 0)
            assert await client.recheck() and client.ready and fake.looks == 3
            assert [d async for d in client.generate(request(None))]
            await client.close()
    finally:
        await runner.cleanup()


async def test_a_server_never_up_is_logged_once_with_why(monkeypatch, caplog) -> None:
    """A server that does not answer its first probes (a wrong address, an engine not started) is one WARNING
    naming it and why, not silence; once up, going down again is the pool's usual INFO line."""
    monkeypatch.setattr(pool_module, "HEALTH_INTERVAL_S", 3600)  # no periodic look during the test
    starting = StartingServer()
    runner, url = await serve_fake(starting)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections to it are refused
    nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    try:
        async with aiohttp.ClientSession() as session:
            client = pool_of([url, nowhere], session)
            with caplog.at_level(logging.INFO, logger="vlm_gateway.engine"):
                await client.start()
                for _ in range(2):
                    await client.check_health()
                starting.up = True
                await client.check_health()
                starting.up = False
                for _ in range(pool_module.HEALTH_FAILURES_DOWN):
                    await client.check_health()
            await client.close()
    finally:
        closed.close()
        await runner.cleanup()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not up" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert any(w.startswith(f"engine {nowhere} for m is not up: connection refused") for w in warnings), warnings
    assert any(w.startswith(f"engine {url} for m is not up: no answer of 200") for w in warnings), warnings
    assert any(r.getMessage() == f"engine {url} for m is down" for r in caplog.records)


class _Process:
    """A supervised (embedded) server: the pool starts and stops it with itself."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def test_a_replica_is_ready_when_the_servers_it_runs_itself_are_up(pool) -> None:
    """GET /ready reads this: a server of the replica's own (embedded) that is down keeps the replica out
    of a load balancer's rotation; a shared (remote) one does not."""
    fakes, _, runners = pool
    own, shared, _ = list(fakes)
    async with aiohttp.ClientSession() as session:
        mixed = pool_of([own, shared], session, supervised=[_Process(own)])
        await mixed.check_health()
        assert mixed.local_ready
        await runners[shared].cleanup()  # the shared server goes away: still ready
        await mixed.check_health()
        await mixed.check_health()
        assert mixed.local_ready and not mixed.server_up(shared)
        await runners[own].cleanup()  # its own goes away: not ready
        for _ in range(pool_module.HEALTH_FAILURES_DOWN + 1):
            await mixed.check_health()
        assert not mixed.local_ready and not mixed.ready
    remote_only = pool_of([own], session)
    assert remote_only.local_ready  # nothing of its own to wait for
