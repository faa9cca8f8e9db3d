"""The gateway tier's own capacity: ``serve --workers 1`` against ``--workers N`` on one port, both in front
of the same scripted engine (``tests/fake_engine.py``: it answers after ``--hold-ms``, so the gateway, not
vLLM, is what runs out). Closed-loop load from ``wrk`` (Debian: ``apt install wrk``), a C client that
leaves the cores to the gateway; the two gateways take turns ``--repeat`` times. Needs Redis
(``--workers`` > 1 does).

    make bench-workers
    make bench-workers ARGS="--stream --concurrency 256"
    make bench-workers ARGS="--workers 1 --stream --concurrency 16 --tokens 8 --token-gap-ms 5"

(``--tokens``/``--token-gap-ms``: the engine streams one chunk per token, as vLLM does, a step apart; with
``--workers 1`` only the one gateway runs, which measures its own CPU per streamed request.)

Prints, per turn, req/s, p50 latency and the gateway's CPU ms per request (all its processes), then the
medians and the N-worker / 1-worker ratio of each turn.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

from bench.procs import CpuMeter, descendants
from tests.fake_engine import FakeEngine
from tests.helpers import PYTHON, TEST_REDIS_URL, Child, free_port, png_data_uri
from vlm_gateway.testing.tiny import ensure_tiny


def start_gateway(workers: int, engine_url: str, checkpoint: Path, logs: Path, prefix: str) -> tuple[Child, str]:
    port = free_port()
    config = logs / f"workers-{workers}.toml"
    config.write_text(f'redis_url = "{TEST_REDIS_URL}"\nlog_level = "warning"\n[limits]\nredis_prefix = "{prefix}:"\n'
                      f'[[models]]\nid = "m"\ncheckpoint = "{checkpoint}"\ncontext_length = 4096\n'
                      f'engine = {{ kind = "remote", urls = ["{engine_url}"] }}\n')
    child = Child(f"workers-{workers}", [PYTHON, "-m", "vlm_gateway.cli", "serve", "--config", str(config), "--port",
                                         str(port), "--workers", str(workers)], logs)
    url = f"http://127.0.0.1:{port}"
    # up, and with several workers all of them (and multiprocessing's resource tracker) started
    child.wait_http(url + "/health", 120, ok=lambda r: r.status_code == 200 and r.json()["model_loaded"]
                    and (workers == 1 or len(descendants(child.proc.pid)) > workers))
    return child, url


def wrk(url: str, script: Path, concurrency: int, seconds: int) -> tuple[int, float, str]:
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script),
                          url + "/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    if failed := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise SystemExit(f"{failed[1]} requests failed:\n{out}")
    return (int(re.search(r"(\d+) requests in", out)[1]), float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
            re.search(r"^\s+50%\s+(\S+)", out, re.M)[1])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--seconds", type=int, default=10, help="per turn")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hold-ms", type=float, default=5, help="the scripted engine's time per answer")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--tokens", type=int, default=1, help="streamed: the engine's chunks, one per token")
    parser.add_argument("--token-gap-ms", type=float, default=0, help="streamed: the engine's time per token")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt install wrk")
    logs = Path("/tmp") / f"bench-workers-{uuid.uuid4().hex[:8]}"
    logs.mkdir()
    checkpoint = ensure_tiny("llava_1_5", Path.home() / ".cache" / "vlm-gateway" / "tiny")
    body = json.dumps({"model": "m", "max_tokens": 8, "stream": args.stream, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri(64, 48, (200, 30, 30))}},
        {"type": "text", "text": "What is in this image?"}]}]})
    script = logs / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    results: dict[int, list[float]] = {1: [], args.workers: []}
    with FakeEngine(hold_s=args.hold_ms / 1000, served_name="m", tokens=args.tokens,
                    token_gap_s=args.token_gap_ms / 1000) as engine:
        gateways = {n: start_gateway(n, engine.url, checkpoint, logs, f"bench-workers-{n}-{uuid.uuid4().hex[:6]}")
                    for n in results}
        try:
            for _proc, url in gateways.values():
                wrk(url, script, args.concurrency, 3)  # warm-up
            for turn in range(args.repeat):
                for n in (list(results) if turn % 2 == 0 else list(results)[::-1]):
                    child, url = gateways[n]
                    meter = CpuMeter({"gateway": [child.proc.pid, *descendants(child.proc.pid)]})
                    meter.start()
                    requests, rps, p50 = wrk(url, script, args.concurrency, args.seconds)
                    cpu_ms = 1000 * meter.stop()["gateway"] / requests
                    results[n].append(rps)
                    print(f"turn {turn + 1}, {n} worker(s): {rps:.0f} req/s, p50 {p50}, "
                          f"gateway CPU {cpu_ms:.2f} ms/req", flush=True)
        finally:
            for child, _url in gateways.values():
                child.stop()
    one, many = results[1], results[args.workers]
    kind = "streamed" if args.stream else "whole answers"
    ratios = ", ".join(f"{b / a:.2f}" for a, b in zip(one, many, strict=True))
    print(f"\nc={args.concurrency}, {kind}, engine {args.hold_ms:g} ms/answer: 1 worker {statistics.median(one):.0f} "
          f"req/s, {args.workers} workers {statistics.median(many):.0f} req/s; ratio per turn {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
