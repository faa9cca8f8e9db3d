"""A replica killed with ``kill -9`` while holding a concurrency slot: the slot comes back by itself
once its lease runs out (the real thing, a separate process sharing the Redis)."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import time

import pytest

from tests.gateway.limits.support import make_limiter
from tests.gateway.state.fixtures import REDIS_URL
from tests.helpers import PYTHON, REPO
from vlm_gateway.errors import RateLimited
from vlm_gateway.state import RedisState

LEASE = 5.0  # renewed every 1.25 s by the child's keeper thread

CHILD = """
import asyncio, sys
from redis.asyncio import Redis
from vlm_gateway.limits import KeyStore, LimitSettings, Limiter
from vlm_gateway.state import RedisState

async def main():
    url, prefix, secret, lease = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    state = RedisState(Redis.from_url(url), prefix)
    settings = LimitSettings(lease_ttl_s=lease, renew_interval_s=lease / 4)
    limiter = Limiter(settings, state, KeyStore(state))
    permit = await limiter.admit(await limiter.authenticate("Bearer " + secret), ("m",))
    print("held", flush=True)
    await asyncio.sleep(60)
    await permit.release()

asyncio.run(main())
"""


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().decode().strip() if ready else ""


async def test_killed_replica_gives_its_slot_back(redis_client, prefix) -> None:
    limiter = make_limiter(RedisState(redis_client, prefix), lease_ttl_s=LEASE, renew_interval_s=LEASE / 4)
    secret, key = await limiter.keys.create("acme", concurrency=1)
    slots = f"conc:{key.id}"
    proc = subprocess.Popen([PYTHON, "-c", CHILD, REDIS_URL, prefix, secret, str(LEASE)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        line = await asyncio.to_thread(_read_line, proc, 30)
        assert line == "held", line + proc.stdout.read1().decode() if line else "child did not start"
        await asyncio.sleep(LEASE * 1.5)  # the child renews: still held past one lease
        assert await limiter.state.slots_in_use(slots) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        killed = time.monotonic()
        caller = await limiter.authenticate(f"Bearer {secret}")
        with pytest.raises(RateLimited):
            await limiter.admit(caller, ("m",))
        while await limiter.state.slots_in_use(slots):
            assert time.monotonic() - killed < LEASE + 30, "the dead replica's slot never came back"
            await asyncio.sleep(0.05)
        await (await limiter.admit(caller, ("m",))).release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
