"""Launch a stock vLLM OpenAI server, with the CPU fixes of :mod:`vlm_gateway.engines.cpu_compat`.

Usage::

    python -m vlm_gateway.engines.vllm_server --model DIR --port 8001 --enable-scale-out [vllm api_server args...]

It applies :func:`vlm_gateway.engines.cpu_compat.apply`, puts the fix on ``PYTHONPATH`` for every child process
(:func:`vlm_gateway.engines.cpu_compat.child_env`), sets CPU defaults (``VLLM_CPU_KVCACHE_SPACE=1`` GiB, ...) where
unset, then runs ``vllm.entrypoints.openai.api_server`` as ``__main__`` (``runpy``; the ``vllm``
console script does not work under vllm-cpu).

How the fix reaches vLLM's children: on CPU vLLM forces ``VLLM_WORKER_MULTIPROC_METHOD=spawn`` for
EngineCore. A spawned child re-imports the parent's ``__main__`` module by name (``vlm_gateway.engines.vllm_server``
as ``__mp_main__``, which is why ``apply()`` runs at import time here and why the vLLM module is run
with ``alter_sys=False``: ``sys.modules["__main__"]`` stays this module), and it inherits ``PYTHONPATH``
whose generated ``sitecustomize`` covers any other interpreter (e.g. vLLM's
``python -m vllm.model_executor.models.registry`` model-inspection subprocess).

The command line and environment to start it with: :mod:`vlm_gateway.engines.vllm_launch` (no side effects).
"""

from __future__ import annotations

import os
import runpy
import sys

from vlm_gateway.engines import cpu_compat
from vlm_gateway.engines.vllm_launch import server_env

cpu_compat.apply()  # at import time on purpose: spawned children import this module as __mp_main__

VLLM_MODULE = "vllm.entrypoints.openai.api_server"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    model = args[args.index("--model") + 1] if "--model" in args[:-1] else None
    os.environ.update(server_env(model_path=model))  # idempotent: a supervisor usually passed these
    sys.argv = [VLLM_MODULE, *args]
    runpy.run_module(VLLM_MODULE, run_name="__main__", alter_sys=False)


if __name__ == "__main__":
    main()
