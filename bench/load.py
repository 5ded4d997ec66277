"""A bounded async load client for SSE streams, and the server-side resource probe."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil


@dataclass
class StreamResult:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    chunks: int = 0
    error: str | None = None


@dataclass
class LevelResult:
    server: str
    concurrency: int
    streams: int
    wall_s: float
    results: list[StreamResult]
    cpu_s: float
    peak_rss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def pooled(cls, parts: Sequence[LevelResult]) -> LevelResult:
        """Rounds of one server at one level read as one measurement: streams and times
        summed, latencies over every stream, the highest peak."""
        first = parts[0]
        return cls(first.server, first.concurrency, sum(p.streams for p in parts), sum(p.wall_s for p in parts),
                   [r for p in parts for r in p.results], sum(p.cpu_s for p in parts),
                   max(p.peak_rss_mb for p in parts))

    @property
    def completed(self) -> list[StreamResult]:
        return [r for r in self.results if r.ok]

    @property
    def errors(self) -> int:
        return len(self.results) - len(self.completed)

    def percentile(self, attr: str, q: float) -> float:
        values = sorted(getattr(r, attr) for r in self.completed)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def tokens(self) -> int:
        return sum(r.chunks for r in self.completed)


async def one_stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                     headers: dict[str, str], count_chunk: Any) -> StreamResult:
    started = time.perf_counter()
    first: float | None = None
    chunks = 0
    event = None
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                return StreamResult(False, error=f"HTTP {response.status}")
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                    if event == "error":
                        return StreamResult(False, error="error event")
                elif line.startswith("data: ") and event == "data":
                    if first is None:
                        first = time.perf_counter()
                    chunks += count_chunk(line[6:])
        if event != "end":
            return StreamResult(False, error="no end event")
        now = time.perf_counter()
        return StreamResult(True, (first or now) - started, now - started, chunks)
    except (TimeoutError, aiohttp.ClientError) as error:
        return StreamResult(False, error=type(error).__name__)


class ProcessTree:
    """A server's processes: uvicorn's workers and the service's CPU pool are children
    of the process started, and their CPU serves the streams as much as its own."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.roots = [psutil.Process(pid) for pid in pids]

    def _members(self) -> list[psutil.Process]:
        return [member for root in self.roots for member in (root, *root.children(recursive=True))]

    def cpu_s(self) -> float:
        return sum(self._measure(lambda p: sum(p.cpu_times()[:2])))

    def rss(self) -> int:
        return int(sum(self._measure(lambda p: p.memory_info().rss)))

    def _measure(self, read: Any) -> list[float]:
        values = []
        for process in self._members():
            try:
                values.append(read(process))
            except psutil.Error:  # a worker that ended meanwhile
                pass
        return values


async def run_level(server: str, urls: Sequence[str], bodies: Sequence[dict[str, Any]], headers: dict[str, str],
                    pids: Sequence[int], concurrency: int, streams: int, count_chunk: Any) -> LevelResult:
    """Stream i sends `bodies[i % len(bodies)]` to `urls[i % len(urls)]` (replicas take
    turns). CPU and peak memory are those of every process tree in `pids` (`ProcessTree`)."""
    tree = ProcessTree(pids)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    gate = asyncio.Semaphore(concurrency)
    peak = tree.rss()
    stop = asyncio.Event()

    async def sample_memory() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree.rss())
            await asyncio.sleep(0.05)

    async def bounded(session: aiohttp.ClientSession, index: int) -> StreamResult:
        async with gate:
            return await one_stream(session, urls[index % len(urls)], bodies[index % len(bodies)], headers,
                                    count_chunk)

    cpu_before = tree.cpu_s()
    sampler = asyncio.create_task(sample_memory())
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        results = await asyncio.gather(*(bounded(session, index) for index in range(streams)))
    wall = time.perf_counter() - started
    stop.set()
    await sampler
    cpu = tree.cpu_s() - cpu_before
    return LevelResult(server, concurrency, streams, wall, list(results), cpu, peak / 2**20)


def count_text_chunk(data: str) -> int:
    """A token is a data event carrying answer text (a JSON string or a summary piece)."""
    value = json.loads(data)
    if isinstance(value, str):
        return 1
    return 1 if isinstance(value, dict) and "summary" in value else 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
