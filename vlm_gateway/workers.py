"""Several gateway processes on one port (``workers`` > 1): one process's Python runs on one core, so a
box whose gateway tier is the limit serves more with more of them.

``serve`` (this module's ``serve``) binds the port once and uvicorn's supervisor starts ``workers``
processes that accept on it, restarting one that dies. Each builds the same app from the same resolved
settings (handed down in ``SETTINGS_ENV`` as JSON, so a CLI flag or the tiny default reaches every
worker). What they share lives where replicas share it:

- keys, limits, jobs, batches, files, stored responses and the routing owner table: Redis, so
  ``redis_url`` is required (in-process state would split: a job made on one worker unknown to the next);
- ``/metrics``: prometheus-client's multiprocess mode over ``PROMETHEUS_MULTIPROC_DIR``, made here as a
  temporary directory (removed at exit) when it is not set;
- embedded engines: started once, here in the supervising process, and handed to the workers as remote
  servers on loopback (N workers never start N engines). The supervisor restarts one that exits.

What stays per worker: caches (images loaded and sized; which images an engine was sent: a worker that did
not send one sends it again, ``vlm_gateway.engines.vllm_remote``), each pool's count of requests in flight
per server (least-loaded routing and the load bound see their own worker's), and ``jobs.concurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

from vlm_gateway import logs
from vlm_gateway.settings import EngineSettings, Settings, SettingsError

if TYPE_CHECKING:
    from vlm_gateway.engines.vllm_embedded import EmbeddedVLLM

SETTINGS_ENV = "_VLM_GATEWAY_WORKER_SETTINGS"  # outside the VLM_GATEWAY_ prefix: not a settings override

def check(settings: Settings) -> None:
    """``SettingsError`` where several workers would not behave as one gateway."""
    if settings.workers < 1:
        raise SettingsError(f"invalid configuration: workers = {settings.workers}. Fix: set workers to 1 or more")
    if settings.workers > 1 and not settings.redis_url:
        raise SettingsError(f"workers = {settings.workers} needs redis_url: keys, limits, jobs, batches, files and "
                            "stored responses would otherwise live apart in each worker. Fix: set redis_url "
                            "(or VLM_GATEWAY_REDIS_URL), or serve with workers = 1")


def app():  # noqa: ANN201 - uvicorn's factory (``vlm_gateway.workers:app``); Litestar is imported lazily
    """One worker's app, built from the settings its supervisor resolved."""
    from vlm_gateway.app import create_app
    from vlm_gateway.cli import settle_heap

    settings = msgspec.json.decode(os.environ[SETTINGS_ENV], type=Settings)
    logs.configure(settings.log_level)
    application = create_app(settings)
    application.on_startup.append(settle_heap)
    return application


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as reply:  # noqa: S310 - our own loopback engine
            return reply.status == 200
    except OSError:
        return False


class _Engines:
    """The embedded engines of every model, supervised by an event loop in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        from vlm_gateway.models import ModelRegistry

        self._registry = {m.id: m for m in ModelRegistry(settings).models}
        self.processes: list[EmbeddedVLLM] = []
        models = [msgspec.structs.replace(entry, engine=self._local(entry.id, entry.engine),
                                          engines=[self._local(entry.id, g) for g in entry.engines])
                  for entry in settings.models]
        self.settings = msgspec.structs.replace(settings, models=models)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embedded-engines", daemon=True)

    def _local(self, model_id: str, group: EngineSettings) -> EngineSettings:
        """An embedded group as the remote server its engine, started here, will be."""
        from vlm_gateway.app import embedded_engine

        if group.kind != "embedded":
            return group
        process = embedded_engine(self._registry[model_id], group)
        process.ready = functools.partial(_healthy, process.url)
        self.processes.append(process)
        return msgspec.structs.replace(group, kind="remote", urls=[process.url], port=0, args=[], env={},
                                       started_here=True)

    def __enter__(self) -> _Engines:
        if self.processes:
            self._thread.start()
            for process in self.processes:
                asyncio.run_coroutine_threadsafe(process.start(), self._loop).result()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.processes:
            for process in self.processes:
                asyncio.run_coroutine_threadsafe(process.close(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()


@contextlib.contextmanager
def _metrics_dir() -> Iterator[None]:
    """A directory for prometheus-client's multiprocess files: a fresh temporary one, removed at exit,
    unless ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    path = tempfile.mkdtemp(prefix="vlm-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(path, ignore_errors=True)


def serve(settings: Settings) -> int:
    """Serve ``settings.workers`` processes on ``settings.host:settings.port`` until stopped (``check``ed
    settings); the exit code (uvicorn's start-up failure code when a worker could not start its app)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    with _metrics_dir(), _Engines(settings) as engines:
        os.environ[SETTINGS_ENV] = msgspec.json.encode(engines.settings).decode()
        config = uvicorn.Config("vlm_gateway.workers:app", factory=True, workers=settings.workers, host=settings.host,
                                port=settings.port, log_level=settings.log_level.lower(), access_log=False,
                                log_config=None)  # one format: the root logger's (vlm_gateway.logs)
        print(f"vlm-gateway on http://{settings.host}:{settings.port}/v1 serving "
              + ", ".join(m.id for m in settings.models) + f" ({settings.workers} workers)", file=sys.stderr)
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])  # what uvicorn.run does, keeping hold
        supervisor.run()  # of the supervisor to read how its workers ended
        failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
        return STARTUP_FAILURE if failed else 0
