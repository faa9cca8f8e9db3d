"""`make bench`: stock vLLM direct vs. the gateway in front of it, under the same closed-loop load, in one run.

Starts one vLLM server (tiny checkpoint, CPU, ``--enable-scale-out``) and one gateway whose model points
at it as a remote engine, so both paths share the very same engine. Cases (each at every concurrency
level, 8 output tokens, straight at vLLM's own ``/v1/chat/completions`` and through the gateway):

- 64x48 PNG data URI (and the same, streamed: time to first text);
- 1024x768 JPEG data URI with ``detail: high``;
- a 5-turn conversation that resends its image every turn (each turn the whole history again);
- an http URL image served on 127.0.0.1 (640x480 PNG, the same URL every time);
- 2 images per request.

With ``--litellm``, LiteLLM's proxy in front of the same vLLM is a third target (``bench/litellm.py``).

For each: requests/s, p50 and p99 latency, TTFT (streamed), and CPU ms per request of the front process
(the gateway, LiteLLM), of vLLM's API server process and of the processes below it (its engine core and
worker, which poll while they wait, so their CPU is not all work) (``/proc/PID/stat`` before and after), as medians
of ``--repeat`` runs in which the targets take turns (the ratio to direct is taken per turn, then its
median). Then the gateway's RSS after start, after the cases, and after ``--rss-requests`` more requests.
Every run uses images no earlier run sent, so no path gains from another's caches. Times are only
compared within this one run.

    python -m bench [--family qwen2_5_vl] [--requests 200] [--concurrency 1 16] [--repeat 3]
                    [--rss-requests 10000] [--case NAME ...] [--litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import msgspec
from aiohttp import web
from PIL import Image

from bench import litellm as litellm_bench
from bench.load import Result, closed_loop
from bench.procs import CpuMeter, descendants, rss_mib
from tests.helpers import PYTHON, Child, free_port, png_data_uri
from vlm_gateway.engines.vllm_launch import server_command, server_env
from vlm_gateway.testing.tiny import ensure_tiny

MODEL = "bench-model"
PATH = "/v1/chat/completions"
Body = Callable[[int], bytes]


def jpeg_data_uri(width: int, height: int, seed: int) -> str:
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7 + seed) % 256, (y * 5 + 3 * seed) % 256, (x + y) % 256)
                   for y in range(height) for x in range(width)])
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def colour(seed: int) -> tuple[int, int, int]:
    return (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)


def image_part(url: str, detail: str | None = None) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}


def chat(content: list[dict], max_tokens: int, stream: bool = False, history: list[dict] = ()) -> bytes:
    return msgspec.json.encode({
        "model": MODEL, "messages": [*history, {"role": "user", "content": content}],
        "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,  # exactly max_tokens on both paths
        **({"stream": True} if stream else {})})


class Case(msgspec.Struct):
    name: str
    body: Callable[[int, int], Body]  # (run seed, max_tokens) -> (request index -> body)
    stream: bool = False
    chain: int = 1  # requests a worker sends in sequence: a conversation's turns, each after the last answer


def cases(image_url: str) -> list[Case]:
    question = {"type": "text", "text": "What is in this image?"}

    def small(seed: int, n: int, stream: bool = False) -> Body:
        body = chat([image_part(png_data_uri(64, 48, colour(seed))), question], n, stream)
        return lambda i: body

    def large(seed: int, n: int) -> Body:
        body = chat([image_part(jpeg_data_uri(1024, 768, seed), "high"), question], n)
        return lambda i: body

    def conversation(seed: int, n: int) -> Body:
        def body(i: int) -> bytes:
            conv, turn = divmod(i, 5)
            image = png_data_uri(96, 72, colour(1000 * seed + conv))
            history: list[dict] = []
            for t in range(turn):
                history += [{"role": "user", "content": [image_part(image), {"type": "text", "text": f"Turn {t}?"}]},
                            {"role": "assistant", "content": f"Answer {t}."}]
            return chat([image_part(image), {"type": "text", "text": f"Turn {turn}?"}], n, history=history)
        return body

    def url(seed: int, n: int) -> Body:
        body = chat([image_part(f"{image_url}?v={seed}"), question], n)
        return lambda i: body

    def two(seed: int, n: int) -> Body:
        body = chat([image_part(png_data_uri(64, 48, colour(seed))), image_part(png_data_uri(48, 64, colour(seed + 1))),
                     {"type": "text", "text": "Compare them."}], n)
        return lambda i: body

    return [Case("64x48 PNG data URI", small), Case("64x48 PNG data URI, streamed",
                                                     lambda s, n: small(s, n, True), stream=True),
            Case("1024x768 JPEG data URI, detail high", large), Case("5-turn conversation, image every turn",
                                                                   conversation, chain=5),
            Case("http URL image (loopback)", url), Case("2 images per request", two)]


def start_stack(family: str, logs: Path, engine_args: list[str] | None = None
                ) -> tuple[Child, Child, str, str, float]:
    checkpoint = ensure_tiny(family, Path.home() / ".cache" / "vlm-gateway" / "tiny")
    engine_port, port = free_port(), free_port()
    args = ["--served-model-name", MODEL, "--disable-uvicorn-access-log",
            "--limit-mm-per-prompt", '{"image": 8}',  # the conversation's fifth turn holds five images
            *(engine_args or [])]
    engine = Child("engine", server_command(str(checkpoint), engine_port, args),
                   logs, env=server_env(model_path=str(checkpoint)))
    started = time.monotonic()
    engine_url = f"http://127.0.0.1:{engine_port}"
    engine.wait_http(engine_url + "/health", 900)
    engine_start_s = time.monotonic() - started
    config = logs / "gateway.toml"
    config.write_text(f'port = {port}\nlog_level = "warning"\n[images]\nallow_loopback = true\n'
                      f'[[models]]\nid = "{MODEL}"\ncheckpoint = "{checkpoint}"\ncontext_length = 4096\n'
                      'generation_config = true\n'  # the same default sampling as vLLM's own chat route
                      f'engine = {{ kind = "remote", urls = ["{engine_url}"] }}\n')
    gateway = Child("gateway", [PYTHON, "-m", "vlm_gateway.cli", "serve", "--config", str(config)], logs)
    url = f"http://127.0.0.1:{port}"
    gateway.wait_http(url + "/health", 120, ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])
    return engine, gateway, engine_url, url, engine_start_s


async def image_server() -> tuple[web.AppRunner, str]:
    """A loopback image host: one 640x480 PNG (any query string)."""
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (30, 90, 160)).save(buf, format="PNG")
    body = buf.getvalue()

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


class Target(msgspec.Struct):
    """Where a case's requests go: vLLM itself, or a front (the gateway, LiteLLM) in front of it."""

    name: str
    url: str
    headers: dict[str, str] = {}
    front: str | None = None  # the process whose CPU is the front's (a CpuMeter name)


async def run_case(case: Case, targets: list[Target], meter: CpuMeter, args: argparse.Namespace,
                   seeds: iter) -> list[Result]:
    for target in targets:  # warm up every path (connections, compiled paths)
        await closed_loop("warm-up", target.url + PATH, case.body(next(seeds), args.max_tokens), 2, 4,
                          target.headers, stream=case.stream)
    results = []
    for conc in args.concurrency:
        n = max(args.requests, 4 * conc)
        n += -n % 5  # whole conversations
        for rep in range(args.repeat):  # the targets take turns: slow spells of the box hit them all
            for target in targets:
                meter.start()
                result = await closed_loop(target.name, target.url + PATH, case.body(next(seeds), args.max_tokens),
                                           conc, n, target.headers, stream=case.stream, chain=case.chain)
                spent = meter.stop()
                result.cpu_ms = {proc: 1000 * s / max(result.requests, 1) for proc, s in spent.items()}
                if target.front:
                    result.cpu_ms["front"] = result.cpu_ms[target.front]
                results.append(result)
                print(f"  {case.name}: {target.name} c={conc} #{rep + 1}: {result.rps:.2f} req/s", file=sys.stderr)
    return results


def table(case: str, results: list[Result]) -> list[str]:
    """One row per target and concurrency: medians over the repeats; "x direct" is the median of each
    repeat's ratio to the direct run beside it, with the lowest and highest."""
    lines = ["", f"{case}:", f"{'target':<9}{'conc':>5}{'reqs':>6}{'err':>5}{'req/s':>9}{'x direct':>9}"
             f"{'(min-max)':>12}{'p50 ms':>9}{'p99 ms':>9}{'ttft ms':>9}{'front cpu ms':>14}{'vllm api cpu ms':>17}"
             f"{'vllm core cpu ms':>18}"]
    names = list(dict.fromkeys(r.name for r in results))
    for conc in sorted({r.concurrency for r in results}):
        direct = [r for r in results if r.name == "direct" and r.concurrency == conc]
        for name in names:
            runs = [r for r in results if r.name == name and r.concurrency == conc]
            ratios = [r.rps / d.rps for r, d in zip(runs, direct, strict=True)]
            ttfts = [r.ttft_p50_ms for r in runs if r.ttft_p50_ms is not None]
            ttft = f"{median(ttfts):.1f}" if ttfts else "-"
            gw = f"{median([r.cpu_ms['front'] for r in runs]):.2f}" if "front" in runs[0].cpu_ms else "-"
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if name != "direct" else ""
            lines.append(f"{name:<9}{conc:>5}{sum(r.requests for r in runs):>6}{sum(r.errors for r in runs):>5}"
                         f"{median([r.rps for r in runs]):>9.2f}{median(ratios):>9.2f}{spread:>12}"
                         f"{median([r.p50_ms for r in runs]):>9.1f}{median([r.p99_ms for r in runs]):>9.1f}{ttft:>9}"
                         f"{gw:>14}{median([r.cpu_ms['vllm-api'] for r in runs]):>17.2f}"
                         f"{median([r.cpu_ms['vllm-core'] for r in runs]):>18.2f}")
    return lines


async def measure(engine: Child, gateway: Child, engine_url: str, gateway_url: str, args: argparse.Namespace,
                  litellm: tuple[Child, str, dict[str, str]] | None = None,
                  ) -> tuple[dict[str, list[Result]], dict[str, float]]:
    runner, image_url = await image_server()
    pids: dict[str, int | list[int]] = {"gateway": gateway.proc.pid, "vllm-api": engine.proc.pid,
                                        "vllm-core": descendants(engine.proc.pid)}  # engine core, workers
    targets = [Target("direct", engine_url), Target("gateway", gateway_url, front="gateway")]
    if litellm is not None:
        pids["litellm"] = litellm[0].proc.pid
        targets.append(Target("litellm", litellm[1], litellm[2], front="litellm"))
    meter = CpuMeter(pids)
    seeds = iter(range(1, 1 << 30))
    memory = {"after start": rss_mib(gateway.proc.pid)}
    rows = {}
    try:
        for case in cases(image_url):
            if args.case and not any(c.lower() in case.name.lower() for c in args.case):
                continue
            rows[case.name] = await run_case(case, targets, meter, args, seeds)
        memory["after the cases"] = rss_mib(gateway.proc.pid)
        if args.rss_requests:
            print(f"  {args.rss_requests} more requests through the gateway", file=sys.stderr)
            half = args.rss_requests // 2
            small = cases(image_url)[0].body
            await closed_loop("rss", gateway_url + PATH, small(next(seeds), 1), 16, half)
            memory[f"after {half} more requests"] = rss_mib(gateway.proc.pid)
            await closed_loop("rss", gateway_url + PATH, small(next(seeds), 1), 16, args.rss_requests - half)
            memory[f"after {args.rss_requests} more requests"] = rss_mib(gateway.proc.pid)
    finally:
        await runner.cleanup()
    return rows, memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--requests", type=int, default=200, help="requests per target and level (≥ 4×conc)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--case", nargs="*", default=[], help="only the cases whose name contains one of these")
    parser.add_argument("--repeat", type=int, default=3, help="runs per target and level, taking turns")
    parser.add_argument("--rss-requests", type=int, default=10_000, help="requests for the RSS growth check")
    parser.add_argument("--litellm", action="store_true", help="LiteLLM's proxy as a third target (its own venv; "
                        "needs LITELLM_MASTER_KEY)")
    parser.add_argument("--engine-args", default="", help="more vLLM flags, one string (they win)")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="vlm-bench-"))
    if args.litellm:
        litellm_bench.ensure_venv()  # before anything is measured: installing takes the CPU for minutes
    print(f"starting the engine and the gateway (logs in {logs})", file=sys.stderr)
    engine, gateway, engine_url, gateway_url, start_s = start_stack(args.family, logs, shlex.split(args.engine_args))
    litellm = None
    try:
        if args.litellm:
            litellm = litellm_bench.start(engine_url, MODEL, logs)
        rows, memory = asyncio.run(measure(engine, gateway, engine_url, gateway_url, args, litellm))
    finally:
        if litellm is not None:
            litellm[0].stop()
        gateway.stop()
        engine.stop()
    lines = [f"family {args.family}; {os.cpu_count()} CPUs; engine (vLLM, CPU) ready after {start_s:.1f} s; "
             f"{args.max_tokens} output tokens; {args.repeat} turns per target; cpu ms = CPU per request of that "
             "process (front: the gateway or LiteLLM)"]
    for case, results in rows.items():
        lines += table(case, results)
    lines += ["", "gateway RSS: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in memory.items())]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
