"""The concurrency limit as an invariant, under stress: three real gateway replicas on one Redis, a key
with concurrency 3, 60 clients sending slow requests at once, and one replica's event loop stalled for
12 s mid-run (longer than the 10 s lease; leases are long because a loaded CI box has been seen to
stop whole processes for over 6 s). An independent monitor reads the key's live leases in Redis
every 10 ms; the scripted engine counts the requests really running. Neither may ever exceed 3.

Each request runs 24 s at the engine, longer than the stall plus a lease: with renewals on the event loop
(the design before the keeper thread) the stalled replica's leases lapse while its requests still run,
others take the slots, and the engine sees 5 at once (measured: the Redis monitor alone stays at 3,
because a lapsed lease no longer counts there — hence both checks).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.fake_engine import FakeEngine
from tests.gateway.state.fixtures import REDIS_URL
from tests.helpers import PYTHON, Child, free_port, require_redis
from tests.slot_monitor import SlotMonitor

CONCURRENCY = 3
CLIENTS = 60
LEASE_S = 10.0  # shorter than the stall: a replica renewing from its event loop would lose its leases
STALL_S = 12.0


@pytest.fixture
def cluster(tmp_path: Path, tiny_checkpoint: Path):
    require_redis().close()
    prefix = f"stress-{uuid.uuid4().hex[:8]}:"
    with FakeEngine(hold_s=24.0) as engine:
        config = tmp_path / "gateway.toml"
        config.write_text("\n".join([
            f'redis_url = "{REDIS_URL}"', "",
            "[limits]", f'redis_prefix = "{prefix}"', f"lease_ttl_s = {LEASE_S}", "renew_interval_s = 0.5",
            # a state call may take as long as a lease: the box that stopped processes for 6 s (see above)
            # would otherwise turn a slow Redis reply into a 503 that says nothing about the limit
            "trace_slots = true", "request_timeout_s = 60", f"state_timeout_s = {LEASE_S}", "",
            "[jobs]", f'key_prefix = "{prefix}{{jobs}}:"', "",
            "[[models]]", 'id = "m"', f'checkpoint = "{tiny_checkpoint}"',
            f'engine = {{ kind = "remote", urls = ["{engine.url}"] }}', ""]))
        replicas = []
        for i in range(3):
            port = free_port()
            child = Child(f"stress-{i}", [PYTHON, "-m", "tests.gateway.limits.stallable", "serve", "--config",
                                          str(config), "--port", str(port)], tmp_path, env={"STALL_S": str(STALL_S)})
            replicas.append((child, f"http://127.0.0.1:{port}"))
        try:
            for child, url in replicas:
                child.wait_http(url + "/health", 120, ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])
            yield config, prefix, engine, replicas
        finally:
            for child, _ in replicas:
                child.stop()
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=prefix + "*"):
                client.delete(key)


def test_concurrency_never_exceeds_the_limit_under_stress_and_a_stalled_loop(cluster) -> None:
    config, prefix, engine, replicas = cluster
    out = subprocess.run([PYTHON, "-m", "vlm_gateway.cli", "keys", "create", "--config", str(config), "--name",
                          "stress", "--rpm", "0", "--concurrency", str(CONCURRENCY)],
                         capture_output=True, text=True, check=True).stdout
    key_id = re.search(r"Created API key (\S+)", out).group(1)
    secret = re.search(r"(vlm-[A-Za-z0-9_-]{20,})", out).group(1)
    monitor = SlotMonitor(f"{prefix}conc:{key_id}", REDIS_URL)
    monitor.start()
    stalled: list[Child] = []
    stall_sent = threading.Event()
    run_until = time.monotonic() + 28.0

    unexpected: list[str] = []  # what a response outside 200/429 said, for the assertion's message

    def client(i: int) -> list[int]:
        codes = []
        # a new connection per request: a kept-alive one that the stalled server closes as idle just as
        # the client reuses it is a reset no request caused
        with httpx.Client(base_url=replicas[i % 3][1], timeout=60, headers={"Authorization": f"Bearer {secret}"},
                          limits=httpx.Limits(max_keepalive_connections=0)) as http:
            while time.monotonic() < run_until:
                r = http.post("/v1/chat/completions", json={
                    "model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": f"hi {i}"}]})
                codes.append(r.status_code)
                if r.status_code not in (200, 429):
                    unexpected.append(f"{r.status_code} from {replicas[i % 3][1]}: {r.text[:300]}")
                if r.status_code == 429:
                    time.sleep(0.05)
        return codes

    def stall_while_holding() -> None:
        # Stall a replica that holds a slot now: each one's log names its holder ids (trace_slots).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            live = held_now()
            for child, _ in replicas:
                if set(re.findall(r"acquire key=\S+ holder=(\S+) granted=1", child.log_path.read_text())) & live:
                    os.kill(child.proc.pid, signal.SIGUSR1)
                    stalled.append(child)
                    stall_sent.set()
                    return
            time.sleep(0.02)

    held_now = monitor.live

    with ThreadPoolExecutor(CLIENTS + 1) as pool:
        staller = pool.submit(lambda: (time.sleep(2.0), stall_while_holding()))
        results = list(pool.map(client, range(CLIENTS)))
        staller.result()
    monitor.finish()
    codes = [c for r in results for c in r]

    assert stall_sent.is_set(), "no replica was seen holding a slot"
    assert "the event loop stalled for" in stalled[0].log_path.read_text()
    assert set(codes) <= {200, 429}, (sorted(set(codes)), unexpected[:5])
    assert codes.count(200) >= CONCURRENCY and codes.count(429) > 0
    assert monitor.samples > 100
    assert monitor.max_seen <= CONCURRENCY, monitor.max_seen
    assert engine.max_running <= CONCURRENCY, engine.max_running
    assert "slot lease lost" not in "".join(c.log_path.read_text() for c, _ in replicas)
    deadline = time.monotonic() + 30
    while held_now():  # releases are sent before the responses; a moment at most
        assert time.monotonic() < deadline, held_now()
        time.sleep(0.05)
    print(f"stress: {len(codes)} requests ({codes.count(200)} x 200, {codes.count(429)} x 429), "
          f"{monitor.samples} monitor samples, max leases {monitor.max_seen}, max running {engine.max_running}")
