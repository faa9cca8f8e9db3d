"""Limiter: authentication, model restriction, rpm / concurrency / tpm, leases, two replicas on Redis."""

from __future__ import annotations

import asyncio
import gc
import time

import msgspec
import pytest

from tests.gateway.limits.support import SHORT_LEASE, make_caller, make_limiter
from vlm_gateway.errors import (
    AuthenticationFailed,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    error_response,
)
from vlm_gateway.limits import ConfigKey, KeyStore, hash_secret
from vlm_gateway.limits.rate import ANONYMOUS, duration
from vlm_gateway.state import MemoryState, RedisState

# --- without keys: one path, no limits -----------------------------------------------------------


async def test_no_keys_no_limits(backend) -> None:
    limiter = make_limiter(backend)
    assert not limiter.enabled
    for header in (None, "", "Bearer sk-whatever", "Basic abc"):
        assert await limiter.authenticate(header) is ANONYMOUS
    permit = await limiter.admit(ANONYMOUS, ("m",))
    assert permit.headers == {} and permit.timeout_s == 30.0
    await permit.release(tokens=100)
    await permit.release()
    assert permit.released


# --- authentication ------------------------------------------------------------------------------

async def test_authenticate(backend) -> None:
    limiter = make_limiter(backend)
    secret, _ = await limiter.keys.create("acme", rpm=10, concurrency=2, tpm=99, models=["m"])
    assert not limiter.enabled  # as last seen; the next request looks again
    caller = await limiter.authenticate(f"bearer  {secret} ")
    assert limiter.enabled
    assert (caller.name, caller.rpm, caller.concurrency, caller.tpm, caller.models) == ("acme", 10, 2, 99, ("m",))
    assert caller.key_id.startswith("key_")
    for header in (None, "", "Bearer", f"Basic {secret}"):
        with pytest.raises(AuthenticationFailed, match="didn't provide an API key") as missing:
            await limiter.authenticate(header)
        assert missing.value.status == 401
    with pytest.raises(AuthenticationFailed, match="Incorrect API key provided") as wrong:
        await limiter.authenticate(f"Bearer {secret[:-1]}{'Y' if secret.endswith('Z') else 'Z'}")  # 1 char off
    assert secret[8:-4] not in wrong.value.message and wrong.value.code == "invalid_api_key"
    body = msgspec.json.decode(error_response(None, wrong.value).content)
    assert body["error"]["type"] == "authentication_error"


async def test_config_keys_enable_limits_without_a_store() -> None:
    limiter = make_limiter(MemoryState(), [ConfigKey(name="cfg", hash=hash_secret("vlm-cfg"), rpm=3)])
    assert limiter.enabled
    caller = await limiter.authenticate("Bearer vlm-cfg")
    assert caller.name == "cfg" and caller.rpm == 3 and caller.key_id.startswith("cfg-")
    with pytest.raises(AuthenticationFailed):
        await limiter.authenticate(None)


async def test_revocation_takes_effect_on_the_next_request(backend) -> None:
    limiter = make_limiter(backend)
    secret, caller = await make_caller(limiter)
    await (await limiter.admit(caller, ("m",))).release()
    await KeyStore(backend).revoke(caller.key_id)  # e.g. `vlm-gateway keys revoke` on another machine
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await limiter.authenticate(f"Bearer {secret}")


async def test_state_failure_is_503_not_open(prefix) -> None:
    from redis.asyncio import Redis

    from tests.helpers import free_port

    dead = Redis(port=free_port(), socket_connect_timeout=0.2)
    limiter = make_limiter(RedisState(dead, prefix), state_timeout_s=0.5)
    try:
        with pytest.raises(EngineUnavailable) as err:
            await limiter.authenticate("Bearer vlm-x")
        assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    finally:
        await dead.aclose()


# --- models --------------------------------------------------------------------------------------

async def test_model_restricted_key(backend) -> None:
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter, models=["qwen", "alias-b"])
    with pytest.raises(ModelNotFound) as err:
        await limiter.admit(caller, ("llava", "llava-alias"))
    assert err.value.status == 404 and err.value.param == "model" and "`llava`" in err.value.message
    await (await limiter.admit(caller, ("qwen",))).release()
    await (await limiter.admit(caller, ("b-id", "alias-b"))).release()  # an alias counts


# --- rpm -----------------------------------------------------------------------------------------

async def test_rpm_429_with_headers(backend) -> None:
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter, rpm=2)
    first = await limiter.admit(caller, ("m",))
    second = await limiter.admit(caller, ("m",))
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert [first.headers["x-ratelimit-remaining-requests"], second.headers["x-ratelimit-remaining-requests"]] == [
        "1", "0"]
    assert second.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in first.headers
    with pytest.raises(RateLimited) as err:
        await limiter.admit(caller, ("m",))
    headers = err.value.headers
    assert err.value.status == 429 and "requests per min" in err.value.message
    assert 59 <= int(headers["Retry-After"]) <= 60 and 58_000 < int(headers["retry-after-ms"]) <= 60_000
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    response = error_response(None, err.value)
    assert response.status_code == 429 and response.headers["Retry-After"] == headers["Retry-After"]
    body = msgspec.json.decode(response.content)["error"]
    assert (body["type"], body["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    await first.release()
    await second.release()


async def test_retry_after_is_exact(backend) -> None:
    limiter = make_limiter(backend, window_s=0.4)
    _, caller = await make_caller(limiter, rpm=2)
    for _ in range(2):
        await (await limiter.admit(caller, ("m",))).release()
    with pytest.raises(RateLimited) as err:
        await limiter.admit(caller, ("m",))
    wait_ms = int(err.value.headers["retry-after-ms"])
    assert 100 < wait_ms <= 400
    await asyncio.sleep(wait_ms / 1000)
    await (await limiter.admit(caller, ("m",))).release()


async def test_refused_requests_consume_nothing(backend) -> None:
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter, rpm=5, concurrency=1)
    held = await limiter.admit(caller, ("m",))
    for _ in range(10):
        with pytest.raises(RateLimited, match="concurrent") as err:
            await limiter.admit(caller, ("m",))
    assert err.value.headers["retry-after-ms"] == "500" and err.value.headers["Retry-After"] == "1"
    assert err.value.headers["x-ratelimit-remaining-requests"] == "4"
    await held.release()
    again = await limiter.admit(caller, ("m",))
    assert again.headers["x-ratelimit-remaining-requests"] == "3"
    await again.release()


async def test_exactly_n_under_a_burst(backend) -> None:
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter, rpm=30, concurrency=1000)
    outcomes = await asyncio.gather(*(limiter.admit(caller, ("m",)) for _ in range(100)), return_exceptions=True)
    permits = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(permits) == 30
    assert all(isinstance(o, RateLimited) and "Retry-After" in o.headers for o in outcomes if o not in permits)
    await asyncio.gather(*(p.release() for p in permits))


async def test_exactly_n_across_two_replicas(redis_client, second_redis_client, prefix) -> None:
    one = make_limiter(RedisState(redis_client, prefix))
    two = make_limiter(RedisState(second_redis_client, prefix))
    secret, _ = await one.keys.create("acme", rpm=30, concurrency=1000)
    callers = [await one.authenticate(f"Bearer {secret}"), await two.authenticate(f"Bearer {secret}")]
    assert callers[0] == callers[1]
    replicas = [one, two]
    outcomes = await asyncio.gather(*(replicas[i % 2].admit(callers[i % 2], ("m",)) for i in range(120)),
                                    return_exceptions=True)
    permits = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(permits) == 30, [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, RateLimited)]
    assert sum(isinstance(o, RateLimited) for o in outcomes) == 90
    await asyncio.gather(*(p.release() for p in permits))


# --- concurrency ---------------------------------------------------------------------------------

async def test_concurrency_across_two_replicas(redis_client, second_redis_client, prefix) -> None:
    one = make_limiter(RedisState(redis_client, prefix))
    two = make_limiter(RedisState(second_redis_client, prefix))
    _, caller = await make_caller(one, rpm=1000, concurrency=5)
    outcomes = await asyncio.gather(*((one, two)[i % 2].admit(caller, ("m",)) for i in range(20)),
                                    return_exceptions=True)
    permits = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(permits) == 5 and all(isinstance(o, RateLimited) for o in outcomes if o not in permits)
    with pytest.raises(RateLimited):
        await two.admit(caller, ("m",))
    await permits[0].release()
    await permits[0].release()  # idempotent: frees one slot, not two
    extra = await two.admit(caller, ("m",))
    with pytest.raises(RateLimited):
        await one.admit(caller, ("m",))
    await asyncio.gather(extra.release(), *(p.release() for p in permits))
    assert await one.state.slots_in_use(f"conc:{caller.key_id}") == 0


async def wait_until(predicate, bound_s: float = 30.0) -> None:
    """Poll an async predicate until true; the bound only catches a broken build (never a timing claim)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while not await predicate():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


async def test_held_slot_survives_a_stalled_event_loop(backend) -> None:
    limiter = make_limiter(backend, lease_ttl_s=5.0, renew_interval_s=0.2)
    _, caller = await make_caller(limiter, concurrency=1)
    permit = await limiter.admit(caller, ("m",))
    time.sleep(6.0)  # the loop stalls for longer than a lease; the keeper's thread keeps renewing
    await permit.check()  # the lease is still proven: nothing to take again
    with pytest.raises(RateLimited):
        await limiter.admit(caller, ("m",))
    await permit.release()
    await (await limiter.admit(caller, ("m",))).release()
    await limiter.close()


async def test_dead_holder_slot_comes_back_after_the_lease(backend) -> None:
    limiter = make_limiter(backend, **SHORT_LEASE)
    _, caller = await make_caller(limiter, concurrency=1)
    key = f"conc:{caller.key_id}"
    await limiter.admit(caller, ("m",))
    limiter.keeper.close()  # the replica "dies": renewals stop, nothing is released
    with pytest.raises(RateLimited):
        await limiter.admit(caller, ("m",))

    async def free() -> bool:
        return await backend.slots_in_use(key) == 0

    await wait_until(free)
    await (await limiter.admit(caller, ("m",))).release()


async def test_dropped_permit_is_released(backend) -> None:
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter, concurrency=1)
    await limiter.admit(caller, ("m",))  # never released (a bug): the Permit is garbage
    gc.collect()

    async def free() -> bool:
        return await backend.slots_in_use(f"conc:{caller.key_id}") == 0

    await wait_until(free)
    assert limiter.keeper.holders == []
    await (await limiter.admit(caller, ("m",))).release()
    await limiter.close()


async def test_release_only_frees_the_callers_own_slot(backend) -> None:
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter, concurrency=2)
    first, second = await limiter.admit(caller, ("m",)), await limiter.admit(caller, ("m",))
    await first.release()
    await first.release()
    assert await backend.slots_in_use(f"conc:{caller.key_id}") == 1  # the second's slot is untouched
    await second.release()
    await limiter.close()


async def test_client_disconnect_frees_the_slot(backend) -> None:
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter, concurrency=1)
    admitted = asyncio.Event()

    async def request() -> None:
        permit = await limiter.admit(caller, ("m",))
        try:
            admitted.set()
            await asyncio.sleep(60)  # generating
        finally:
            await permit.release()

    task = asyncio.create_task(request())
    await admitted.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # cancelled again while releasing (a cancel scope does this)
    with pytest.raises(asyncio.CancelledError):
        await task
    await limiter.close()
    assert await limiter.state.slots_in_use(f"conc:{caller.key_id}") == 0


# --- tokens --------------------------------------------------------------------------------------

async def test_tpm(backend) -> None:
    limiter = make_limiter(backend, window_s=0.4)
    _, caller = await make_caller(limiter, tpm=100)
    permit = await limiter.admit(caller, ("m",))
    assert permit.headers["x-ratelimit-limit-tokens"] == "100"
    assert permit.headers["x-ratelimit-remaining-tokens"] == "100"
    await permit.release(tokens=150)
    await permit.release(tokens=150)  # counted once
    with pytest.raises(RateLimited, match="tokens per min") as err:
        await limiter.admit(caller, ("m",))
    assert err.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "x-ratelimit-remaining-requests" not in err.value.headers  # refused before any request counted
    await asyncio.sleep(int(err.value.headers["retry-after-ms"]) / 1000)
    await (await limiter.admit(caller, ("m",))).release()


async def test_prompts_running_at_once_cannot_all_pass_the_tokens_per_minute(backend) -> None:
    """Eight requests admitted at once (each sees an empty window): each one's prompt is counted just before
    it goes to the engine, atomically, so the ones that do not fit are refused, naming what they asked."""
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter, tpm=100, rpm=0, concurrency=0)
    permits = [await limiter.admit(caller, ("m",)) for _ in range(8)]
    sent, refused = [], []
    for permit in permits:
        try:
            await permit.charge(30)
            sent.append(permit)
        except RateLimited as exc:
            refused.append(exc)
            await permit.release()
    assert len(sent) == 3 and len(refused) == 5
    assert "Requested 30" in refused[0].message and refused[0].headers["x-ratelimit-remaining-tokens"] == "10"
    assert sent[-1].headers["x-ratelimit-remaining-tokens"] == "10"
    for permit in sent:
        await permit.release(tokens=35)  # prompt 30 (counted) + 5 completion tokens
    await limiter.close()
    used = await limiter.state.peek(f"tpm:{caller.key_id}", 60.0, 100)
    assert used.used == 3 * 35


async def test_a_queued_jobs_prompt_is_counted_without_a_refusal(backend) -> None:
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter, tpm=100, rpm=0, concurrency=0)
    permits = [await limiter.admit_waiting(caller, ("m",)) for _ in range(2)]
    for permit in permits:
        await permit.charge(80)  # a job was admitted by its wait: it runs, and counts
        await permit.release(tokens=80)
    await limiter.close()
    assert (await limiter.state.peek(f"tpm:{caller.key_id}", 60.0, 100)).used == 160


async def test_work_queued_under_a_revoked_key_does_not_run(backend) -> None:
    limiter = make_limiter(backend)
    _, caller = await make_caller(limiter)
    await (await limiter.admit_waiting(caller, ("m",))).release()
    await KeyStore(backend).revoke(caller.key_id)
    with pytest.raises(AuthenticationFailed, match="revoked") as err:
        await limiter.admit_waiting(caller, ("m",))
    assert err.value.code == "key_revoked"


async def test_a_config_key_removed_from_the_file_stops_its_queued_work() -> None:
    kept = ConfigKey(name="kept", hash=hash_secret("vlm-kept"))
    before = make_limiter(MemoryState(), [kept, ConfigKey(name="gone", hash=hash_secret("vlm-gone"))])
    gone = await before.authenticate("Bearer vlm-gone")
    after = make_limiter(MemoryState(), [kept])  # the file, edited, and the gateway restarted
    await (await after.admit_waiting(await after.authenticate("Bearer vlm-kept"), ("m",))).release()
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await after.admit_waiting(gone, ("m",))


@pytest.mark.parametrize("field", ["rpm", "concurrency", "tpm"])
async def test_a_negative_limit_is_refused_not_read_as_none(field) -> None:
    with pytest.raises(InvalidRequest, match="0 \\(no limit\\) or more") as err:
        await KeyStore(MemoryState()).create("k", **{field: -1})
    assert err.value.param == field
    with pytest.raises(ValueError, match="0 \\(no limit\\) or more"):
        ConfigKey(name="k", hash=hash_secret("vlm-k"), **{field: -1})


def test_duration_format() -> None:
    assert [duration(s) for s in (0, 0.0201, 1, 1.5, 59.9724, 60, 61.25, 360)] == [
        "0ms", "21ms", "1s", "1.5s", "59.973s", "1m0s", "1m1.25s", "6m0s"]  # (rounded up: never too early)
    # rounded to the millisecond before it is split: never "60s", "1m60s" or "1000ms"
    assert [duration(s) for s in (59.9996, 119.9996, 3599.9999, 0.9999)] == ["1m0s", "2m0s", "60m0s", "1s"]


async def test_a_queued_job_waits_for_a_slot_instead_of_failing(backend) -> None:
    limiter = make_limiter(backend)  # concurrency_retry_after_s 0.5
    _, caller = await make_caller(limiter, rpm=1, concurrency=1)
    held = await limiter.admit(caller, ("m",))  # pays the one request of the minute, holds the slot
    waiting = asyncio.create_task(limiter.admit_waiting(caller, ("m",)))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # no 429: it waits
    await held.release()
    permit = await asyncio.wait_for(waiting, 30)  # admitted without paying requests/min again
    with pytest.raises(RateLimited, match="requests per min"):
        await limiter.check_rate(caller)
    await permit.release()
    with pytest.raises(ModelNotFound):  # what cannot wait fails at once
        await limiter.admit_waiting(msgspec.structs.replace(caller, models=("other",)), ("m",))
    await limiter.close()


async def test_a_lapsed_lease_is_taken_again_or_the_request_stops(backend) -> None:
    """A whole process that stands still for longer than a lease (its keeper thread too) may lose its
    slot to another replica: the request then stops at its next step instead of running over the limit."""
    frozen = make_limiter(backend, **SHORT_LEASE)  # lease 1 s
    other = make_limiter(backend, **SHORT_LEASE)
    _, caller = await make_caller(frozen, concurrency=1)
    key = f"conc:{caller.key_id}"
    permit = await frozen.admit(caller, ("m",))
    frozen.keeper.close()  # the process stands still: no renewals ...
    time.sleep(1.5)  # ... and no event loop, for longer than the lease
    taken = await other.admit(caller, ("m",))  # another replica takes the lapsed slot
    with pytest.raises(RateLimited) as stopped:
        await permit.check()
    assert stopped.value.code == "concurrency_slot_lost" and stopped.value.status == 429
    assert await backend.slots_in_use(key) == 1
    await taken.release()
    second = await frozen.admit(caller, ("m",))  # this time the slot is free when it lapses
    time.sleep(1.5)
    await second.check()  # taken again: the request goes on
    with pytest.raises(RateLimited):
        await other.admit(caller, ("m",))
    await asyncio.gather(permit.release(), second.release())
    assert await backend.slots_in_use(key) == 0
    await other.close()


async def test_a_state_answer_that_arrived_during_a_loop_stall_is_not_a_timeout() -> None:
    from vlm_gateway.limits.rate import bounded

    loop = asyncio.get_running_loop()
    answered = loop.create_future()
    loop.call_later(0.05, answered.set_result, "ok")  # the state answers in 50 ms ...

    async def state_call() -> str:
        value = await answered
        for _ in range(3):  # ... and the client's coroutines hand the reply up, a step at a time
            await asyncio.sleep(0)
        return value

    pending = asyncio.ensure_future(bounded(state_call(), 0.2))  # (asyncio.wait_for raises here)
    await asyncio.sleep(0)
    time.sleep(0.5)  # ... but the loop stands still past the 0.2 s deadline
    assert await pending == "ok"
    never = loop.create_future()
    with pytest.raises(TimeoutError):  # a state that really does not answer still times out
        await bounded(never, 0.1)
    assert never.cancelled()
