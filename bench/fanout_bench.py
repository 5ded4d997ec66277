"""WebSocket fan-out: many watching screens on one process, publish-to-receive latency.

    .venv/bin/python -m bench.fanout_bench [--sessions 10000] [--customers 100] [--publishes 50]

Opens `--sessions` WebSocket sessions to one service process, spread over
`--customers` customer channels, then analyses interactions through the HTTP chain
(which publishes each finished analysis) and measures, on every watching session, the
time from the event's `created_at` to its arrival. Reports p50/p99 and the server's
memory per connected session.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import psutil
from websockets.asyncio.client import connect

from bench.servers import log_gc_pauses
from bench.stream_bench import request_for, server


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(base: str, pid: int, sessions: int, customers: int, publishes: int) -> None:
    _, _, headers = request_for("full", base)
    process = psutil.Process(pid)
    latencies: list[float] = []
    by_event: dict[str, list[float]] = {}
    received = 0
    ready = 0
    ws_base = base.replace("http://", "ws://")
    rss_before = process.memory_info().rss

    async def watch(index: int) -> None:
        nonlocal received, ready
        async with connect(f"{ws_base}/ws/ai/insights/fan-{index % customers}", additional_headers=headers,
                           open_timeout=120, ping_interval=None, max_queue=64) as ws:
            ready += 1
            async for raw in ws:  # no per-session timers: the client must not be the bottleneck
                message = json.loads(raw)
                if message.get("type") == "insight":
                    created = datetime.fromisoformat(message["created_at"]).timestamp()
                    latencies.append(time.time() - created)
                    by_event.setdefault(message["id"], []).append(latencies[-1])
                    received += 1

    started = time.perf_counter()
    tasks = []
    rss_half, half_at = 0, 0
    for batch_start in range(0, sessions, 500):
        if batch_start >= sessions // 2 and not half_at:
            rss_half, half_at = process.memory_info().rss, batch_start
        tasks += [asyncio.create_task(watch(i)) for i in range(batch_start, min(sessions, batch_start + 500))]
        while ready < len(tasks):
            await asyncio.sleep(0.05)
            failed = [t for t in tasks if t.done() and t.exception()]
            if failed:
                raise RuntimeError(f"session failed: {failed[0].exception()!r}")
    connect_s = time.perf_counter() - started
    # The client holds 10,000 connections too: its collector's full passes over them took
    # 0.4-1.1 s each while events arrived (BENCH_GC_LOG=1 logs the client's pauses as well),
    # and every event in flight looked that late. Frozen, they are no longer rescanned;
    # the server is measured as it runs.
    gc.collect()
    gc.freeze()
    await asyncio.sleep(1.0)
    rss_connected = process.memory_info().rss
    url, body, _ = request_for("full", base)
    invoke = url.replace("/stream", "/invoke")
    publishing_from = time.time()
    async with aiohttp.ClientSession() as http:
        for n in range(publishes):
            payload = {"input": {**body["input"], "customer_id": f"fan-{n % customers}",
                                 "text": f"Update {n}: the report is ready, thanks!"}}
            async with http.post(invoke, json=payload, headers=headers) as response:
                assert response.status == 200, await response.text()
            await asyncio.sleep(0.1)
    if os.environ.get("BENCH_GC_LOG"):  # to match the server's pauses to the publishing
        print(f"published from {publishing_from:.2f} to {time.time():.2f}", flush=True)
    expected = publishes * (sessions // customers)
    deadline = time.perf_counter() + 30
    while received < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else float("nan")

    per_session_kb = (rss_connected - rss_before) / sessions / 1024
    # Over idle, a process whose idle heap happened to keep free space (its idle RSS
    # moves between ~340 and ~395 MB from run to run, on the same code) shows less per
    # session; the second half's growth is measured after that space is used up.
    marginal_kb = (rss_connected - rss_half) / (sessions - half_at) / 1024 if half_at else float("nan")
    print(f"sessions {sessions} over {customers} customers, connected in {connect_s:.1f} s")
    print(f"server RSS {rss_before / 2**20:.0f} MB -> {rss_connected / 2**20:.0f} MB: {per_session_kb:.1f} KB per session; "
          f"second half {rss_half / 2**20:.0f} -> {rss_connected / 2**20:.0f} MB: {marginal_kb:.1f} KB per session")
    worst = sorted(by_event.items(), key=lambda item: max(item[1]), reverse=True)[:3]
    print("slowest events (id: max ms):", ", ".join(f"{k}: {max(v) * 1e3:.0f}" for k, v in worst))
    print(f"deliveries {received}/{expected}; publish-to-receive p50 {pct(.5):.1f} ms, p99 {pct(.99):.1f} ms, "
          f"max {pct(1.0):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--publishes", type=int, default=50)
    args = parser.parse_args()
    raise_fd_limit()  # inherited by the server process too
    if os.environ.get("BENCH_GC_LOG"):
        log_gc_pauses("client")
    with tempfile.TemporaryDirectory() as tmp, server("full", Path(tmp)) as (base, pid):
        asyncio.run(run(base, pid, args.sessions, args.customers, args.publishes))


if __name__ == "__main__":
    main()
