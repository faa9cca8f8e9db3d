"""Small helpers shared by tests: images, free ports, waiting for servers, child processes, the test Redis
and the test API keys."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from PIL import Image

from vlm_gateway.limits import ConfigKey
from vlm_gateway.limits.keys import hash_secret

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# The Redis the tests use: ``$VLM_TEST_REDIS_URL``, else the local default.
TEST_REDIS_URL = os.environ.get("VLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Two API keys, unlimited (rpm and concurrency 0), for the route tests: their secrets and config entries.
ALICE, BOB = "vlm-test-alice-secret", "vlm-test-bob-secret"
TEST_KEYS = [ConfigKey(name=name, hash=hash_secret(secret), rpm=0, concurrency=0)
             for name, secret in (("alice", ALICE), ("bob", BOB))]


def auth(secret: str = ALICE) -> dict[str, str]:
    """The request headers that present ``secret`` as an API key."""
    return {"Authorization": f"Bearer {secret}"}


def no_redis(exc: BaseException, url: str = TEST_REDIS_URL) -> NoReturn:
    """No Redis answered at ``url``: skip the test, or fail it under ``CI`` (CI starts a Redis, see
    .ci/run: a missing one is a failure, not a skip)."""
    if os.environ.get("CI"):
        pytest.fail(f"no Redis at {url} under CI: {exc}")
    pytest.skip(f"no Redis at {url}: {exc}")


def require_redis():
    """A blocking client of the test Redis, or a skip (a failure under ``CI``) when none answers."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no Redis here"
        client.close()
        no_redis(exc)
    return client


@contextlib.contextmanager
def redis_namespace(name: str) -> Iterator[str]:
    """Settings TOML that points a gateway at the test Redis with every key (limits, jobs, files, batches)
    under a prefix no other test uses; those keys are deleted on exit. Skips (fails under ``CI``) without
    a Redis."""
    redis = require_redis()
    prefix = f"vlmtest-{name}-{uuid.uuid4().hex[:8]}"
    try:
        yield (f'redis_url = "{TEST_REDIS_URL}"\n[limits]\nredis_prefix = "{prefix}:limits:"\n'
               f'[jobs]\nkey_prefix = "{prefix}:{{jobs}}:"\n[files]\nkey_prefix = "{prefix}:{{files}}:"\n'
               f'[batches]\nkey_prefix = "{prefix}:{{batches}}:"\n')
    finally:
        for key in redis.scan_iter(f"{prefix}:*"):
            redis.delete(key)
        redis.close()


def png_bytes(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(width, height, color)).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Child:
    """A child process with its output in a log file, killed (whole process group) on stop."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path = REPO):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    def tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def wait_http(self, url: str, timeout_s: float, ok=lambda r: r.status_code == 200) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if ok(httpx.get(url, timeout=2)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready at {url} after {timeout_s} s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def serve_app(app, start_timeout_s: float = 30) -> Iterator[str]:
    """An ASGI app on uvicorn in a thread, on a free loopback port; yields its /v1 base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)
