"""The embedded engine: a stock vLLM server on this machine, started and supervised by the gateway.

Why a supervised child process rather than ``AsyncLLM`` inside the gateway (see README, Architecture):
the gateway then talks to its embedded engine exactly as to remote ones (it is one more ``VLLMServer``
in the model's pool, which starts and stops this supervisor with itself), the gateway process never
imports torch (it starts in a second and stays small), a crashed or out-of-memory engine is restarted
without taking the API down, and the CPU-only torch fix (``vlm_gateway.engines.cpu_compat``) is applied
by one launcher in every engine process.

The child listens on a free loopback port. Its log is passed through to ours line by line, so
``make run`` shows the engine loading; the supervisor restarts it with backoff if it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from vlm_gateway.engines.vllm_launch import server_command, server_env

log = logging.getLogger("vlm_gateway.engine")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the gateway dies, even by kill -9 (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedVLLM:
    """A vLLM server child process, restarted when it exits. ``ready`` says when it serves (its pool's
    health check knows); until then its log shows the loading progress."""

    def __init__(
        self,
        checkpoint: str,
        *,
        served_name: str,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        port: int = 0,
        ready: Callable[[], bool] = lambda: False,
    ) -> None:
        self.checkpoint = checkpoint
        self.served_name = served_name
        self.port = port or free_port()
        self._args = list(args or [])
        self._env = dict(env or {})
        self.ready = ready
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self.started_at: float | None = None
        self.ready_after_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the child and return at once (it serves when vLLM answers ``/health``)."""
        self._supervisor = asyncio.create_task(self._supervise(), name=f"vllm-{self.served_name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        cmd = server_command(self.checkpoint, self.port, ["--disable-uvicorn-access-log", *self._args,
                                                          "--served-model-name", self.served_name])
        env = {**server_env(model_path=self.checkpoint), **self._env}
        log.info("starting vLLM for %s on port %d", self.served_name, self.port)
        return await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._closing:
            self.started_at = time.monotonic()
            self._proc = await self._spawn()
            progress = asyncio.create_task(self._report_progress())
            await self._pipe_log(self._proc)
            code = await self._proc.wait()
            progress.cancel()
            if self._closing:
                return
            log.error("vLLM for %s exited with %s; restarting in %.0f s", self.served_name, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _pipe_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            sys.stderr.write(f"[engine {self.served_name}] {line.decode(errors='replace')}")

    async def _report_progress(self) -> None:
        while not self.ready():
            await asyncio.sleep(5)
            if not self.ready() and self.started_at is not None:
                log.info("engine %s loading… %.0f s", self.served_name, time.monotonic() - self.started_at)
        self.ready_after_s = time.monotonic() - (self.started_at or time.monotonic())
        log.info("engine %s ready after %.1f s", self.served_name, self.ready_after_s)

    async def close(self) -> None:
        self._closing = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
