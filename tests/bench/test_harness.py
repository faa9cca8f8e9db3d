"""The benchmark's own measuring parts (bench/load.py, bench/procs.py), against a scripted server: what
`make bench` prints is only as good as these."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys

from aiohttp import web

from bench.load import closed_loop, percentile
from bench.procs import CpuMeter, cpu_s, descendants, rss_mib


async def serve(delay_first_s: float):
    """A server answering every POST with an event stream whose first text comes after ``delay_first_s``."""
    seen = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        if request.query.get("fail"):
            return web.json_response({"error": {"message": "no"}}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n')
        await asyncio.sleep(delay_first_s)
        await resp.write(b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/chat", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/chat", seen


async def test_closed_loop_counts_every_request_and_times_the_first_text() -> None:
    runner, url, seen = await serve(0.05)
    try:
        result = await closed_loop("t", url, lambda i: b'{"i": %d}' % i, concurrency=3, requests=7, stream=True)
        failed = await closed_loop("t", url + "?fail=1", lambda i: b"{}", concurrency=2, requests=4)
    finally:
        await runner.cleanup()
    assert sorted(body["i"] for body in seen[:7]) == list(range(7))  # each index sent once
    assert (result.requests, result.errors, result.concurrency) == (7, 0, 3)
    assert result.ttft_p50_ms is not None and result.ttft_p50_ms >= 50  # not the role-only first chunk
    assert result.p50_ms >= result.ttft_p50_ms and result.rps > 0
    assert (failed.requests, failed.errors) == (0, 4)


def test_percentile_picks_from_the_sorted_values() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (51.0, 99.0, 100.0)


def test_cpu_meter_sees_this_process_work() -> None:
    meter = CpuMeter({"me": os.getpid()})
    before = cpu_s(os.getpid())
    meter.start()
    data = b"x" * 1_000_000
    while cpu_s(os.getpid()) - before < 0.05:  # work until the kernel has counted some CPU time
        hashlib.sha256(data).digest()
    spent = meter.stop()
    assert spent["me"] >= 0.05
    assert rss_mib(os.getpid()) > 10


def test_cpu_meter_sums_a_group_of_processes_found_below_a_parent() -> None:
    spin = "import hashlib\nwhile True: hashlib.sha256(b'x' * 100000).digest()"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"],
        start_new_session=True)
    try:
        children: list[int] = []
        while not children:
            children = descendants(parent.pid)
        meter = CpuMeter({"below": children, "parent": parent.pid})
        meter.start()
        while sum(cpu_s(pid) for pid in children) - meter._before["below"] < 0.05:
            pass  # until the kernel has counted some of the child's CPU time
        spent = meter.stop()
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
    assert parent.pid not in children and spent["below"] >= 0.05 > spent["parent"]
