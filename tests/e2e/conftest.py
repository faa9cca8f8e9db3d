"""End-to-end fixtures: real vLLM engines (CPU, tiny checkpoints) and one real gateway process.

Engines are expensive (about 3 GiB and 30–40 s each), so every engine and the gateway are session
fixtures shared by all end-to-end tests:

- one stock vLLM server per REMOTE_FAMILIES family, started here with ``--enable-scale-out``
  (the gateway reaches them as remote engines);
- the gateway (``vlm-gateway serve --config``) serving those plus EMBEDDED_FAMILY through its own
  embedded, supervised engine — so both engine modes are exercised by the same tests.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.helpers import PYTHON, Child, free_port
from vlm_gateway.engines.vllm_launch import server_command, server_env
from vlm_gateway.testing.tiny import ensure_tiny

pytestmark = pytest.mark.engine

EMBEDDED_FAMILY = "qwen2_5_vl"
REMOTE_FAMILIES = ["llava_1_5", "gemma3", "llama4"]
ENGINE_START_TIMEOUT_S = 600
STOCK_TOOL_ARGS = '"--enable-auto-tool-choice", "--tool-call-parser", "hermes"'


def model_id(family: str) -> str:
    return "tiny-" + family.replace("_", "-")


class Gateway(msgspec.Struct):
    url: str
    child: object
    engines: dict[str, str]  # family -> direct vLLM base URL
    config: str


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item (``rep_setup``, ``rep_call``), for tests that compare outcomes
    (tests/e2e/test_langchain_standard.py)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def checkpoints(tiny_dir: Path) -> dict[str, Path]:
    return {f: ensure_tiny(f, tiny_dir) for f in [EMBEDDED_FAMILY, *REMOTE_FAMILIES]}


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def vllm_servers(checkpoints: dict[str, Path], logs: Path):
    """family -> base URL of a stock vLLM server on loopback."""
    children: dict[str, tuple[Child, str]] = {}
    for family in REMOTE_FAMILIES:
        port = free_port()
        cmd = server_command(str(checkpoints[family]), port, ["--served-model-name", model_id(family)])
        env = server_env(model_path=str(checkpoints[family]))
        children[family] = (Child(f"vllm-{family}", cmd, logs, env=env), f"http://127.0.0.1:{port}")
    try:
        with ThreadPoolExecutor(len(children)) as pool:
            list(pool.map(lambda item: item[0].wait_http(item[1] + "/health", ENGINE_START_TIMEOUT_S),
                          children.values()))
        yield {family: url for family, (_, url) in children.items()}
    finally:
        for child, _ in children.values():
            child.stop()


def _config(checkpoints: dict[str, Path], servers: dict[str, str], port: int, embedded_port: int) -> str:
    lines = [f"port = {port}", "", "[images]", "allow_loopback = true", ""]
    for family, path in checkpoints.items():
        lines += ["[[models]]", f'id = "{model_id(family)}"', f'checkpoint = "{path}"',
                  "context_length = 4096", "max_images = 4"]
        if family in servers:
            lines += [f'engine = {{ kind = "remote", urls = ["{servers[family]}"] }}']
        else:  # the seeds' FastVLM model name, served here by the tiny Qwen2.5-VL (vLLM has no FastVLM). Its
            # engine also serves as stock vLLM with tools for the LangChain comparison (test_langchain_standard)
            lines += [f"engine = {{ kind = \"embedded\", port = {embedded_port}, args = [{STOCK_TOOL_ARGS}] }}",
                      'aliases = ["fastvlm-1.5b"]']
        lines.append("")
    return "\n".join(lines)


@pytest.fixture(scope="session")
def gateway(checkpoints: dict[str, Path], vllm_servers: dict[str, str], logs: Path):
    port, embedded_port = free_port(), free_port()
    config = logs / "gateway.toml"
    config.write_text(_config(checkpoints, vllm_servers, port, embedded_port))
    child = Child("gateway", [PYTHON, "-m", "vlm_gateway.cli", "serve", "--config", str(config)], logs)
    url = f"http://127.0.0.1:{port}"
    try:
        child.wait_http(url + "/health", ENGINE_START_TIMEOUT_S,
                        ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])
        engines = {**vllm_servers, EMBEDDED_FAMILY: f"http://127.0.0.1:{embedded_port}"}
        yield Gateway(url=url, child=child, engines=engines, config=str(config))
    finally:
        child.stop()


@pytest.fixture(scope="session")
def http(gateway: Gateway):
    with httpx.Client(base_url=gateway.url, timeout=120) as client:
        yield client
