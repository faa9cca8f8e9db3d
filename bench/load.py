"""A closed-loop load generator: C workers, each sending its next request when the last one returns."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import aiohttp
import msgspec


class Result(msgspec.Struct):
    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def closed_loop(name: str, url: str, body: Callable[[int], bytes], concurrency: int, requests: int,
                      headers: dict[str, str] | None = None) -> Result:
    """Send ``requests`` POSTs to ``url`` from ``concurrency`` workers; latency of each, wall time of all."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    timeout = aiohttp.ClientTimeout(total=600)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            start = time.perf_counter()
            async with session.post(url, data=body(i), headers=hdrs) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
                    continue
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return Result(name, concurrency, len(latencies), errors, seconds,
                  1000 * statistics.median(latencies) if latencies else float("nan"),
                  1000 * percentile(latencies, 0.99))
