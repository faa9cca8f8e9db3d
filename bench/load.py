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
    ttft_p50_ms: float | None = None  # streamed: time to the first chunk with generated text
    cpu_ms: dict[str, float] = {}  # CPU ms per request of each measured process (bench.procs)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []


_CHUNK = msgspec.json.Decoder(_Chunk)


def _has_text(line: bytes) -> bool:
    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
        return False
    try:
        chunk = _CHUNK.decode(line[6:])
    except msgspec.DecodeError:
        return False
    return any((c.delta and c.delta.content) or c.text for c in chunk.choices)


async def _first_text(resp: aiohttp.ClientResponse, start: float) -> float | None:
    """Read a streamed answer to its end; seconds from ``start`` to its first chunk with text."""
    first = None
    async for line in resp.content:
        if first is None and _has_text(line):
            first = time.perf_counter() - start
    return first


async def closed_loop(name: str, url: str, body: Callable[[int], bytes], concurrency: int, requests: int,
                      headers: dict[str, str] | None = None, stream: bool = False, chain: int = 1) -> Result:
    """Send ``requests`` POSTs to ``url`` from ``concurrency`` workers; latency of each, wall time of all
    (``stream``: the bodies ask for SSE, and time to first text is measured too). A worker takes ``chain``
    consecutive requests at a time and sends them one after another (the turns of one conversation)."""
    latencies: list[float] = []
    firsts: list[float] = []
    errors = 0
    counter = iter(range(0, requests, chain))
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    timeout = aiohttp.ClientTimeout(total=600)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for first_of_chain in counter:
            for i in range(first_of_chain, min(first_of_chain + chain, requests)):
                start = time.perf_counter()
                async with session.post(url, data=body(i), headers=hdrs) as resp:
                    if resp.status != 200:
                        await resp.read()
                        errors += 1
                        continue
                    if stream:
                        first = await _first_text(resp, start)
                        if first is not None:
                            firsts.append(first)
                    else:
                        await resp.read()
                latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return Result(name, concurrency, len(latencies), errors, seconds,
                  1000 * statistics.median(latencies) if latencies else float("nan"),
                  1000 * percentile(latencies, 0.99),
                  1000 * statistics.median(firsts) if firsts else None)
