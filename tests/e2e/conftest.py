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
        else:  # the seeds' FastVLM model name also answers here (test_seeds; the real FastVLM: test_fastvlm.py). Its
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


class FamilyGateway(msgspec.Struct):
    """A gateway serving one family's tiny checkpoint through its own embedded engine (a module fixture:
    the families with no session engine are started once, one at a time, to bound the run's memory)."""

    url: str
    engine: str  # the embedded vLLM's base URL (also a stock vLLM server, for parity checks)
    checkpoint: Path
    model: str


def _tree_peak_rss_mib(pid: int) -> float:
    """Sum of the peak resident sizes (VmHWM) of ``pid`` and all its descendants, in MiB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0) / 1024
    return total


def family_gateway(family: str, tiny_dir: Path, logs: Path, aliases: tuple[str, ...] = (),
                   engine_args: tuple[str, ...] = ()):
    """Start ``vlm-gateway serve`` for ``family`` with an embedded engine (``engine_args``: more vLLM arguments);
    yield a FamilyGateway; record the engine's start time and the gateway tree's peak RSS in
    ``logs/families-report.json``."""
    import json
    import time

    checkpoint = ensure_tiny(family, tiny_dir)
    port, engine_port = free_port(), free_port()
    config = logs / f"gateway-{family}.toml"
    config.write_text("\n".join([
        f"port = {port}", "", "[images]", "allow_loopback = true", "", "[[models]]", f'id = "{model_id(family)}"',
        f'checkpoint = "{checkpoint}"', "context_length = 4096", f"aliases = {json.dumps(list(aliases))}",
        f'engine = {{ kind = "embedded", port = {engine_port}, args = {json.dumps(list(engine_args))} }}', ""]))
    started = time.monotonic()
    child = Child(f"gateway-{family}", [PYTHON, "-m", "vlm_gateway.cli", "serve", "--config", str(config)], logs)
    url = f"http://127.0.0.1:{port}"
    try:
        child.wait_http(url + "/health", ENGINE_START_TIMEOUT_S,
                        ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])
        start_s = time.monotonic() - started
        yield FamilyGateway(url=url, engine=f"http://127.0.0.1:{engine_port}", checkpoint=checkpoint,
                            model=model_id(family))
        report_path = logs / "families-report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        report[family] = {"gateway_and_engine_ready_s": round(start_s, 1),
                          "peak_rss_mib_gateway_and_engine": round(_tree_peak_rss_mib(child.proc.pid))}
        report_path.write_text(json.dumps(report, indent=1) + "\n")
    finally:
        child.stop()
