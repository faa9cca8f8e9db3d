"""``vlm-gateway serve --workers 2`` with an embedded engine: the supervising process starts one real vLLM
(not one per worker), both workers send it token ids and images, and it stops with the gateway."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import psutil
import pytest

from tests.e2e.conftest import ENGINE_START_TIMEOUT_S
from tests.helpers import PYTHON, Child, free_port, png_data_uri, redis_namespace
from vlm_gateway.testing.tiny import ensure_tiny

pytestmark = pytest.mark.engine


def vllm_servers(root: int) -> list[psutil.Process]:
    """The vLLM API servers in ``root``'s process tree (not the engine-core processes they fork)."""
    launched = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            if "vlm_gateway.engines.vllm_server" in " ".join(proc.cmdline()):
                launched.append(proc)
        except psutil.Error:
            pass
    pids = {proc.pid for proc in launched}
    return [proc for proc in launched if proc.ppid() not in pids]


def test_two_workers_share_one_embedded_engine(tiny_dir: Path, logs: Path) -> None:
    checkpoint = ensure_tiny("llava_1_5", tiny_dir)
    port = free_port()
    config = logs / "gateway-workers.toml"
    url = f"http://127.0.0.1:{port}"

    def ask(i: int) -> openai.types.chat.ChatCompletion:
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
            image = {"type": "image_url", "image_url": {"url": png_data_uri(64, 48, (i * 40 % 256, 90, 20))}}
            return client.chat.completions.create(model="tiny-llava", max_tokens=3, messages=[
                {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])

    with redis_namespace("workers-e2e") as redis_settings:
        config.write_text(f'{redis_settings}[[models]]\nid = "tiny-llava"\ncheckpoint = "{checkpoint}"\n'
                          'context_length = 4096\n')
        child = Child("gateway-workers", [PYTHON, "-m", "vlm_gateway.cli", "serve", "--config", str(config),
                                          "--port", str(port), "--workers", "2"], logs)
        try:
            child.wait_http(url + "/health", ENGINE_START_TIMEOUT_S,
                            ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])
            (engine,) = vllm_servers(child.proc.pid)  # one engine for both workers
            assert engine.ppid() == child.proc.pid  # the supervisor's, not a worker's
            with ThreadPoolExecutor(4) as pool:
                replies = list(pool.map(ask, range(8)))
            assert all(r.usage.completion_tokens == 3 and r.usage.prompt_tokens_details.image_tokens > 0
                       for r in replies), replies
        finally:
            child.stop(sig=signal.SIGTERM)
    deadline = time.monotonic() + 30
    while engine.is_running() and engine.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE  # stopped with the gateway
