"""Launch a stock vLLM OpenAI server, with the CPU fixes of :mod:`engines.cpu_compat`.

Usage::

    python -m engines.vllm_server --model DIR --port 8001 --enable-scale-out [vllm api_server args...]

It applies :func:`engines.cpu_compat.apply`, puts the fix on ``PYTHONPATH`` for every child process
(:func:`engines.cpu_compat.child_env`), sets CPU defaults (``VLLM_CPU_KVCACHE_SPACE=1`` GiB, ...) where
unset, then runs ``vllm.entrypoints.openai.api_server`` as ``__main__`` (``runpy``; the ``vllm``
console script does not work under vllm-cpu).

How the fix reaches vLLM's children: on CPU vLLM forces ``VLLM_WORKER_MULTIPROC_METHOD=spawn`` for
EngineCore. A spawned child re-imports the parent's ``__main__`` module by name (``engines.vllm_server``
as ``__mp_main__``, which is why ``apply()`` runs at import time here and why the vLLM module is run
with ``alter_sys=False``: ``sys.modules["__main__"]`` stays this module), and it inherits ``PYTHONPATH``
whose generated ``sitecustomize`` covers any other interpreter (e.g. vLLM's
``python -m vllm.model_executor.models.registry`` model-inspection subprocess).

Helpers for supervisors and tests: :func:`server_command` and :func:`server_env`.
"""

from __future__ import annotations

import os
import runpy
import sys

from engines import cpu_compat

cpu_compat.apply()  # at import time on purpose: spawned children import this module as __mp_main__

VLLM_MODULE = "vllm.entrypoints.openai.api_server"

# Environment defaults for a small CPU box (only set where unset).
DEFAULT_ENV = {
    # GiB of KV cache (an int; this legacy variable overrides --kv-cache-memory-bytes when set).
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # "auto" pins each engine's worker to core 0 (reserving the rest), so several engines on a small
    # box would all share one core; let the OS schedule instead.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# vLLM args that work on a small CPU machine with the tiny checkpoints of engines.tiny; callers can
# override any of them in extra_args (argparse keeps the last occurrence).
DEFAULT_ARGS = [
    "--dtype",
    "bfloat16",
    "--max-model-len",
    "4096",
    "--max-num-seqs",
    "8",
    "--max-num-batched-tokens",
    "4096",
    "--limit-mm-per-prompt",
    '{"image": 4}',
    "--enforce-eager",
    "--disable-log-stats",
]


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a server subprocess: ``base`` (default ``os.environ``) + fix + CPU defaults."""
    env = cpu_compat.child_env(base)
    for key, value in DEFAULT_ENV.items():
        env.setdefault(key, value)
    return env


def server_command(model_path: str, port: int, extra_args: list[str] | None = None) -> list[str]:
    """argv to start a scale-out-enabled vLLM server for ``model_path`` on ``127.0.0.1:port``.

    Run it with ``env=server_env()``; it works from any cwd. ``extra_args`` go last and win.
    """
    return [
        sys.executable,
        "-m",
        "engines.vllm_server",
        "--model",
        str(model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-scale-out",
        *DEFAULT_ARGS,
        *(extra_args or []),
    ]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    os.environ.update(server_env())
    sys.argv = [VLLM_MODULE, *args]
    runpy.run_module(VLLM_MODULE, run_name="__main__", alter_sys=False)


if __name__ == "__main__":
    main()
