"""`make bench`: gateway vs. direct vLLM under the same closed-loop load, in one run.

Starts one vLLM server (tiny checkpoint, CPU) and one gateway whose model points at that server as a
remote engine, so both paths share the very same engine. Then, for each concurrency level, the same
request — a chat with a small data-URI PNG and 8 output tokens — is sent straight at vLLM's own
``/v1/chat/completions`` and through the gateway. Prints requests/s, p50 and p99 latency of each and
the ratio gateway/direct. Times are only compared within this one run.

    python -m bench [--family qwen2_5_vl] [--requests 24] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench.load import Result, closed_loop
from engines.tiny import ensure_tiny
from engines.vllm_launch import server_command, server_env
from tests.helpers import PYTHON, Child, free_port, png_data_uri

MODEL = "bench-model"


def chat_body(image: str, max_tokens: int) -> bytes:
    return msgspec.json.encode({
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": "What is in this image?"}]}],
        "max_tokens": max_tokens,
        "ignore_eos": True,  # exactly max_tokens on both paths
        "temperature": 0,
    })


def start_stack(family: str, logs: Path) -> tuple[Child, Child, str, str, float]:
    checkpoint = ensure_tiny(family, Path.home() / ".cache" / "vlm-gateway" / "tiny")
    engine_port, gateway_port = free_port(), free_port()
    engine = Child("engine", server_command(str(checkpoint), engine_port, ["--served-model-name", MODEL]),
                   logs, env=server_env(model_path=str(checkpoint)))
    started = time.monotonic()
    engine_url = f"http://127.0.0.1:{engine_port}"
    engine.wait_http(engine_url + "/health", 900)
    engine_start_s = time.monotonic() - started
    config = logs / "gateway.toml"
    config.write_text(f'port = {gateway_port}\nlog_level = "warning"\n[[models]]\nid = "{MODEL}"\n'
                      f'checkpoint = "{checkpoint}"\ncontext_length = 4096\n'
                      f'engine = {{ kind = "remote", urls = ["{engine_url}"] }}\n')
    gateway = Child("gateway", [PYTHON, "-m", "gateway.cli", "serve", "--config", str(config)], logs)
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    gateway.wait_http(gateway_url + "/health", 120, ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])
    return engine, gateway, engine_url, gateway_url, engine_start_s


def report(pairs: list[tuple[Result, Result]], engine_start_s: float, family: str) -> str:
    lines = [f"family {family}; engine (vLLM, CPU) ready after {engine_start_s:.1f} s", "",
             f"{'target':<10}{'conc':>5}{'reqs':>6}{'err':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"]
    for direct, gateway in pairs:
        for r in (direct, gateway):
            lines.append(f"{r.name:<10}{r.concurrency:>5}{r.requests:>6}{r.errors:>5}{r.rps:>9.2f}"
                         f"{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}")
        lines.append(f"{'ratio':<10}{gateway.concurrency:>5}{'':>11}{gateway.rps / direct.rps:>9.3f}"
                     f"{gateway.p50_ms / direct.p50_ms:>9.3f}{gateway.p99_ms / direct.p99_ms:>9.3f}"
                     "   (gateway / direct)")
    return "\n".join(lines)


async def measure(engine_url: str, gateway_url: str, args: argparse.Namespace) -> list[tuple[Result, Result]]:
    body = chat_body(png_data_uri(64, 64), args.max_tokens)
    targets = {"direct": engine_url + "/v1/chat/completions", "gateway": gateway_url + "/v1/chat/completions"}
    for name, url in targets.items():  # warm up both paths (engine caches, connections)
        await closed_loop(name, url, lambda i: body, 2, 4)
    pairs = []
    for conc in args.concurrency:
        n = max(args.requests, 4 * conc)
        direct = await closed_loop("direct", targets["direct"], lambda i: body, conc, n)
        gateway = await closed_loop("gateway", targets["gateway"], lambda i: body, conc, n)
        pairs.append((direct, gateway))
        print(f"  concurrency {conc}: direct {direct.rps:.2f} req/s, gateway {gateway.rps:.2f} req/s",
              file=sys.stderr)
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--requests", type=int, default=32, help="requests per target and level (≥ 4×conc)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="vlm-bench-"))
    print(f"starting engine and gateway (logs in {logs})", file=sys.stderr)
    engine, gateway, engine_url, gateway_url, start_s = start_stack(args.family, logs)
    try:
        pairs = asyncio.run(measure(engine_url, gateway_url, args))
    finally:
        gateway.stop()
        engine.stop()
    print(report(pairs, start_s, args.family))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
