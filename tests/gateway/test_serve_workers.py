"""``vlm-gateway serve --workers 2``: two processes accept on one port and behave as one gateway —
limits shared through Redis, ``/metrics`` summed over both, a killed worker replaced.

The gateway runs as a real subprocess in front of a scripted engine (``tests/fake_engine.py``); no vLLM.
Start-up mistakes (``workers`` without Redis) are in ``test_cli_startup.py``; the embedded engine started
once for every worker is driven for real in ``tests/e2e/test_workers.py``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.fake_engine import FakeEngine
from tests.helpers import PYTHON, TEST_REDIS_URL, Child, free_port, redis_namespace
from vlm_gateway.app import embedded_engine
from vlm_gateway.models import ModelRegistry
from vlm_gateway.settings import EngineSettings, ModelSettings, Settings
from vlm_gateway.workers import _Engines

CHAT = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}


def served_by(metrics_dir: Path) -> dict[int, float]:
    """Chat requests answered, by pid, read from each process's own prometheus-client file (the supervisor's
    holds zeros: it imports the gateway's modules too)."""
    served = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(re.fullmatch(r"counter_(\d+)\.db", path.name).group(1))
        served[pid] = sum(s.value for m in MultiProcessCollector.merge([str(path)])
                          for s in m.samples if s.name == "vlm_gateway_model_requests_total")
    return served


def workers_of(parent: int) -> set[int]:
    """The uvicorn worker processes under ``parent`` (not multiprocessing's resource tracker)."""
    found = set()
    for child in psutil.Process(parent).children():
        try:
            if "multiprocessing.spawn" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:  # gone, or dead and not yet reaped
            pass
    return found


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


@pytest.fixture
def two_workers(tmp_path: Path, tiny_checkpoint: Path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    config = tmp_path / "gateway.toml"
    with redis_namespace("workers") as redis_settings, FakeEngine(hold_s=0.05, served_name="m") as engine:
        config.write_text(
            f'log_level = "warning"\n{redis_settings}'
            f'[[models]]\nid = "m"\ncheckpoint = "{tiny_checkpoint}"\ncontext_length = 4096\n'
            f'engine = {{ kind = "remote", urls = ["{engine.url}"] }}\n')
        port = free_port()
        child = Child(f"workers-{port}", [PYTHON, "-m", "vlm_gateway.cli", "serve", "--config", str(config),
                                          "--port", str(port), "--workers", "2"], tmp_path,
                      env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
        url = f"http://127.0.0.1:{port}"
        try:
            child.wait_http(url + "/health", 120, ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])
            wait_for(lambda: len(workers_of(child.proc.pid)) == 2, 60, "two workers")
            yield child, url, config, metrics_dir
        finally:
            child.stop()


def test_two_workers_answer_on_one_port_as_one_gateway(two_workers) -> None:
    child, url, config, metrics_dir = two_workers
    close = {"Connection": "close"}  # a new connection each: the kernel hands them to either worker
    sent = 0

    def send(headers: dict[str, str]) -> int:
        return httpx.post(url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=60).status_code

    def both_answered() -> bool:
        nonlocal sent
        with ThreadPoolExecutor(6) as pool:
            assert set(pool.map(send, [close] * 12)) == {200}
        sent += 12
        served = served_by(metrics_dir)
        return all(served.get(pid, 0) > 0 for pid in workers_of(child.proc.pid))

    wait_for(both_answered, 60, "both workers answering")  # no keys yet: open
    out = subprocess.run([PYTHON, "-m", "vlm_gateway.cli", "keys", "create", "--config", str(config), "--name",
                          "rpm20", "--rpm", "20", "--concurrency", "0"], capture_output=True, text=True, check=True)
    key = {**close, "Authorization": f"Bearer {re.search(r'(vlm-[A-Za-z0-9_-]{20,})', out.stdout).group(1)}"}
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(send, [key] * 30))
    # one limit for the key, whichever worker answered: the window's count lives in Redis
    assert codes.count(200) == 20 and codes.count(429) == 10, codes
    served = served_by(metrics_dir)
    assert set(served) >= workers_of(child.proc.pid) and sum(served.values()) == sent + 20, served
    # /metrics sums every worker's counters, whichever worker answers the scrape
    scrape = httpx.get(url + "/metrics", headers=close).text
    ok = float(re.search(r'^vlm_gateway_model_requests_total\{model="m",outcome="ok"\} (\S+)$', scrape, re.M)[1])
    limited = float(re.search(r'^vlm_gateway_rate_limited_total\{.*\} (\S+)$', scrape, re.M)[1])
    assert (ok, limited) == (sent + 20, 10), scrape


def test_a_killed_worker_is_replaced_and_its_gauges_forgotten(two_workers) -> None:
    child, url, _config, metrics_dir = two_workers
    close = {"Connection": "close"}
    before = workers_of(child.proc.pid)

    def gauges(pid: int) -> list[Path]:
        return list(metrics_dir.glob(f"gauge_live*_{pid}.db"))

    def both_answered() -> bool:
        with ThreadPoolExecutor(6) as pool:
            assert set(pool.map(lambda _: httpx.post(url + "/v1/chat/completions", json=CHAT, headers=close,
                                                     timeout=60).status_code, range(12))) == {200}
        served = served_by(metrics_dir)
        return all(served.get(pid, 0) > 0 and gauges(pid) for pid in before)

    wait_for(both_answered, 60, "both workers answering")
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (w := workers_of(child.proc.pid)) - before and len(w) == 2 and w, 60, "a new worker")
    assert after & before == before - {victim}
    for _ in range(6):
        r = httpx.post(url + "/v1/chat/completions", json={**CHAT, "max_tokens": 2}, headers=close, timeout=60)
        assert r.status_code == 200, r.text
    assert httpx.get(url + "/metrics", headers=close).status_code == 200
    # the dead worker's in-flight and read-when-scraped gauges are gone; what it counted stays counted
    assert gauges(victim) == [] and served_by(metrics_dir)[victim] > 0


def test_embedded_engines_start_once_for_every_worker(tiny_checkpoint: Path) -> None:
    """Each embedded group becomes a remote server on loopback, started by the supervisor (not each worker)."""
    group = EngineSettings(kind="embedded", args=["--max-num-seqs", "8"], env={"X": "1"}, port=free_port(),
                           routing="least_loaded")
    other = EngineSettings(kind="remote", urls=["http://10.0.0.9:8000"])
    settings = Settings(redis_url=TEST_REDIS_URL, workers=3, models=[
        ModelSettings(id="m", checkpoint=str(tiny_checkpoint), context_length=2048, engine=group, engines=[other])])
    engines = _Engines(settings)
    (process,) = engines.processes
    expected = embedded_engine(ModelRegistry(settings).models[0], group)
    assert (process.url, process._args, process._env) == (expected.url, expected._args, expected._env)
    assert "--max-num-seqs" in process._args and "--max-model-len" in process._args
    (model,) = engines.settings.models
    assert model.engine == EngineSettings(kind="remote", urls=[process.url], routing="least_loaded",
                                         started_here=True)
    assert model.engines == [other]
    assert engines.settings.workers == 3 and engines.settings.redis_url == TEST_REDIS_URL


def test_a_worker_that_cannot_start_stops_the_gateway(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Nothing answers at ``redis_url``: each worker's start-up fails, and so does ``serve`` (not exit 0)."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'redis_url = "redis://127.0.0.1:{free_port()}/0"\n'
                      f'[[models]]\nid = "m"\ncheckpoint = "{tiny_checkpoint}"\n'
                      'engine = { kind = "remote", urls = ["http://127.0.0.1:9"] }\n')
    proc = subprocess.run([PYTHON, "-m", "vlm_gateway.cli", "serve", "--config", str(config), "--port",
                           str(free_port()), "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "rate limiter state is unavailable" in proc.stderr


async def test_a_workers_replica_is_not_ready_before_the_engine_it_runs(tiny_checkpoint) -> None:
    """With ``workers`` > 1 the supervisor runs the embedded engine and each worker sees it as a remote
    server; /ready must still wait for it (it answered 200 while the model loaded)."""
    import aiohttp

    from vlm_gateway.app import engine_pool

    group = EngineSettings(kind="embedded", port=free_port())
    one = Settings(models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint), context_length=2048, engine=group)])
    many = Settings(redis_url=TEST_REDIS_URL, workers=2, models=one.models)
    async with aiohttp.ClientSession() as session:
        single = engine_pool(ModelRegistry(one).models[0], session)
        worker = engine_pool(ModelRegistry(_Engines(many).settings).models[0], session)
        await worker.check_health()  # (nothing listens there yet)
        assert not single.local_ready and not worker.local_ready
