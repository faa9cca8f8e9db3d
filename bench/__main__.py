"""`make bench`: gateway vs. direct vLLM under the same closed-loop load, in one run.

Starts one vLLM server (tiny checkpoint, CPU) and two gateways whose model points at that server as
a remote engine (one with the image cache on, one with it off), so every path shares the very same
engine. Two cases, each at every concurrency level:

- data URI: a chat with a small data-URI PNG and 8 output tokens, straight at vLLM's own
  ``/v1/chat/completions`` and through the gateway;
- URL image: the same chat with an http URL image (640x480 PNG, the same URL every time, served on
  loopback), straight at vLLM (which fetches it itself) and through the gateway with its image cache
  on and off.

Prints requests/s, p50 and p99 latency of each and the ratios to direct. Times are only compared
within this one run.

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
from aiohttp import web

from bench.load import Result, closed_loop
from tests.helpers import PYTHON, Child, free_port, png_bytes, png_data_uri
from vlm_gateway.engines.vllm_launch import server_command, server_env
from vlm_gateway.testing.tiny import ensure_tiny

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


def start_gateway(name: str, checkpoint: Path, engine_url: str, logs: Path, env: dict[str, str]) -> tuple[Child, str]:
    port = free_port()
    config = logs / f"{name}.toml"
    config.write_text(f'port = {port}\nlog_level = "warning"\n[images]\nallow_loopback = true\n'
                      f'[[models]]\nid = "{MODEL}"\ncheckpoint = "{checkpoint}"\ncontext_length = 4096\n'
                      f'engine = {{ kind = "remote", urls = ["{engine_url}"] }}\n')
    child = Child(name, [PYTHON, "-m", "vlm_gateway.cli", "serve", "--config", str(config)], logs, env=env)
    url = f"http://127.0.0.1:{port}"
    child.wait_http(url + "/health", 120, ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])
    return child, url


def start_stack(family: str, logs: Path) -> tuple[list[Child], str, dict[str, str], float]:
    checkpoint = ensure_tiny(family, Path.home() / ".cache" / "vlm-gateway" / "tiny")
    engine_port = free_port()
    engine = Child("engine", server_command(str(checkpoint), engine_port, ["--served-model-name", MODEL]),
                   logs, env=server_env(model_path=str(checkpoint)))
    started = time.monotonic()
    engine_url = f"http://127.0.0.1:{engine_port}"
    engine.wait_http(engine_url + "/health", 900)
    engine_start_s = time.monotonic() - started
    cached, cached_url = start_gateway("gateway", checkpoint, engine_url, logs, {})
    uncached, uncached_url = start_gateway("gateway-nocache", checkpoint, engine_url, logs,
                                           {"VLM_GATEWAY_IMAGES__CACHE_ENTRIES": "0"})
    return [uncached, cached, engine], engine_url, {"gateway": cached_url, "no-cache": uncached_url}, engine_start_s


def report(rows: dict[str, list[Result]], engine_start_s: float, family: str) -> str:
    lines = [f"family {family}; engine (vLLM, CPU) ready after {engine_start_s:.1f} s"]
    for case, results in rows.items():
        lines += ["", f"{case}:", f"{'target':<10}{'conc':>5}{'reqs':>6}{'err':>5}{'req/s':>9}{'p50 ms':>9}"
                  f"{'p99 ms':>9}{'rps/direct':>12}{'p50/direct':>12}"]
        direct = {r.concurrency: r for r in results if r.name == "direct"}
        for r in sorted(results, key=lambda r: (r.concurrency, r.name != "direct")):
            d = direct[r.concurrency]
            lines.append(f"{r.name:<10}{r.concurrency:>5}{r.requests:>6}{r.errors:>5}{r.rps:>9.2f}"
                         f"{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.rps / d.rps:>12.3f}{r.p50_ms / d.p50_ms:>12.3f}")
    return "\n".join(lines)


async def image_server() -> tuple[web.AppRunner, str]:
    """A loopback image host: one 640x480 PNG, the same URL every time."""
    body = png_bytes(640, 480, (30, 90, 160))

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/png")

    app = web.Application()
    app.router.add_get("/photo.png", image)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/photo.png"


async def run_case(targets: dict[str, str], body: bytes, args: argparse.Namespace) -> list[Result]:
    for name, url in targets.items():  # warm up every path (engine caches, connections, image caches)
        await closed_loop(name, url, lambda i: body, 2, 4)
    results = []
    for conc in args.concurrency:
        n = max(args.requests, 4 * conc)
        for name, url in targets.items():
            results.append(await closed_loop(name, url, lambda i: body, conc, n))
            print(f"  {name} c={conc}: {results[-1].rps:.2f} req/s", file=sys.stderr)
    return results


async def measure(engine_url: str, gateways: dict[str, str], args: argparse.Namespace) -> dict[str, list[Result]]:
    path = "/v1/chat/completions"
    runner, image_url = await image_server()
    try:
        data_uri = await run_case({"direct": engine_url + path, "gateway": gateways["gateway"] + path},
                                  chat_body(png_data_uri(64, 64), args.max_tokens), args)
        url_image = await run_case({"direct": engine_url + path, "gateway": gateways["gateway"] + path,
                                    "no-cache": gateways["no-cache"] + path},
                                   chat_body(image_url, args.max_tokens), args)
    finally:
        await runner.cleanup()
    return {"data-URI image (64x64 PNG)": data_uri,
            "URL image (640x480 PNG, same URL; gateway image cache on / off)": url_image}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--requests", type=int, default=32, help="requests per target and level (≥ 4×conc)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="vlm-bench-"))
    print(f"starting engine and gateways (logs in {logs})", file=sys.stderr)
    children, engine_url, gateways, start_s = start_stack(args.family, logs)
    try:
        rows = asyncio.run(measure(engine_url, gateways, args))
    finally:
        for child in children:
            child.stop()
    print(report(rows, start_s, args.family))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
