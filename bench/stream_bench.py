"""Streaming throughput and latency: raw SSE (the transport's floor, and #15's baseline
streaming the same fake model), each as is and with this service's write coalescing,
vs plain LangServe vs this service.

    .venv/bin/python -m bench.stream_bench [--levels 1,10,100,500,1000] [--out bench/results]

Each server runs in its own process on loopback and streams an answer of 400 pieces
from the same fake model (the floor: 400 pre-made strings; `bench.servers` says what
each one sends); a bounded async client drives each concurrency level, in rounds until
the server has streamed for `MIN_LEVEL_S`, after a warm-up of `WARM_UP_STREAMS`, and the
server's own CPU time and peak memory are read from the OS. Prints one table per level
plus the ratios the targets are stated in, and saves latency-vs-concurrency as a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Sequence

import httpx

from bench.fake_model import CHUNKS
from bench.load import LevelResult, count_text_chunk, run_level
from bench.servers import BENCH_SECRET, KINDS, RAW_APPS, model_pieces

RAW_KINDS = tuple(RAW_APPS)
BASELINE = "raw-model-coalesced"  # #15's raw SSE, with every generic tuning the service has


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def server(kind: str, data_dir: Path, *, workers: int = 1, env: dict[str, str] | None = None
           ) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "bench.servers", kind, "--port", str(port),
                                "--data-dir", str(data_dir / kind), "--workers", str(workers)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(url + "/docs", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def request_for(kind: str, url: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    if kind in RAW_KINDS:
        return f"{url}/stream", {}, {}
    if kind == "langserve":
        return f"{url}/chain/stream", {"input": {"text": "hello"}}, {}
    from app.core.auth import TokenVerifier
    from app.core.config import Settings

    token = TokenVerifier(Settings(_env_file=None, auth_jwt_secret=BENCH_SECRET, app_env="test")).mint(
        tenant_id="bench", user_id="bench", roles=("rep",), ttl_s=24 * 3600)
    body = {"input": {"customer_id": "bench-1", "channel": "chat",
                      "text": "Our dashboard is slow again, can you look at it today?"}}
    return f"{url}/api/v1/ai/realtime/interactions/stream", body, {"Authorization": f"Bearer {token}"}


def bodies_for(kind: str, body: dict[str, Any], customers: int) -> list[dict[str, Any]]:
    """This service's streams spread over `customers` customers (each with a history of its
    own); the other servers have no customers."""
    if kind != "full" or customers <= 1:
        return [body]
    return [{"input": {**body["input"], "customer_id": f"bench-{n + 1}"}} for n in range(customers)]


def streams_for(concurrency: int) -> int:
    """A round: at least 200 streams, so a p50 at concurrency 10 is not that of 50 streams
    of which the first ten start together; past 100, one wave of them."""
    return max(200, concurrency * 2) if concurrency <= 100 else concurrency


# Before the first level, each server streams this many at concurrency 10: imports, model
# training, pools and lazily built tables are warm before anything is counted.
WARM_UP_STREAMS = 50
# Each server repeats a level's round until it has streamed this long. A fast server's
# single round lasted under a second, where one pause of the collector or of the machine
# moved its streams/s by a tenth; plain LangServe's lasts 8-55 s.
MIN_LEVEL_S = 3.0


def one_round(kind: str, servers: Sequence[tuple[str, int]], level: int, streams: int, customers: int = 1
              ) -> LevelResult:
    """`streams` streams, `level` at a time, over `servers` ((url, pid) each: replicas of
    one kind, taking turns)."""
    targets = [request_for(kind, url) for url, _ in servers]
    _, body, headers = targets[0]
    return asyncio.run(run_level(kind, [target for target, _, _ in targets], bodies_for(kind, body, customers),
                                 headers, [pid for _, pid in servers], level, streams, count_text_chunk))


def measure(kind: str, url: str, pid: int, level: int, customers: int) -> LevelResult:
    rounds: list[LevelResult] = []
    while not rounds or sum(r.wall_s for r in rounds) < MIN_LEVEL_S:
        rounds.append(one_round(kind, [(url, pid)], level, streams_for(level), customers))
    return LevelResult.pooled(rounds)


def cpu_per_piece_us(r: LevelResult) -> float:
    """Server CPU per piece of the model's answer delivered. The servers send their
    pieces in different numbers of events (the full and raw-model servers one per group
    that arrived together), so pieces, not events, are what compares."""
    return r.cpu_s / (len(r.completed) * model_pieces(r.server)) * 1e6 if r.completed else float("nan")


def print_level(results: list[LevelResult]) -> None:
    print(f"\nconcurrency {results[0].concurrency}")
    header = (f"{'server':<19} {'streams':>7} {'streams/s':>9} {'events/s':>9} {'ttft p50':>9} "
              f"{'p95':>8} {'p99':>8} {'e2e p50':>8} {'p95':>8} {'errors':>6} {'cpu s':>6} "
              f"{'µs/piece':>8} {'peak MB':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.server:<19} {r.streams:>7} {len(r.completed) / r.wall_s:>9.1f} {r.tokens / r.wall_s:>9.0f} "
              f"{r.percentile('ttft_s', .5) * 1e3:>7.1f}ms {r.percentile('ttft_s', .95) * 1e3:>6.1f}ms "
              f"{r.percentile('ttft_s', .99) * 1e3:>6.1f}ms {r.percentile('e2e_s', .5) * 1e3:>6.0f}ms "
              f"{r.percentile('e2e_s', .95) * 1e3:>6.0f}ms {r.errors:>6} {r.cpu_s:>6.1f} "
              f"{cpu_per_piece_us(r):>8.1f} {r.peak_rss_mb:>7.0f}")


def plot(all_results: dict[str, list[LevelResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (ttft_axis, e2e_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, results in all_results.items():
        levels = [r.concurrency for r in results]
        ttft_axis.plot(levels, [r.percentile("ttft_s", .5) * 1e3 for r in results], marker="o", label=f"{kind} p50")
        ttft_axis.plot(levels, [r.percentile("ttft_s", .95) * 1e3 for r in results], marker="x", ls="--",
                       label=f"{kind} p95")
        e2e_axis.plot(levels, [r.percentile("e2e_s", .5) * 1e3 for r in results], marker="o", label=kind)
    for axis, title in ((ttft_axis, "time to first token (ms)"), (e2e_axis, "end-to-end p50 (ms)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("concurrent streams")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"{CHUNKS}-chunk streams on {os.cpu_count()} cores")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,10,100,500,1000")
    parser.add_argument("--servers", default=",".join(KINDS))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--customers", type=int, default=1,
                        help="full only: spread its streams over this many customers (default: all one customer's)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    kinds = [k for k in args.servers.split(",") if k]
    args.out.mkdir(parents=True, exist_ok=True)
    all_results: dict[str, list[LevelResult]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        running = {kind: stack.enter_context(server(kind, Path(tmp))) for kind in kinds}
        for kind, (url, pid) in running.items():
            one_round(kind, [(url, pid)], 10, WARM_UP_STREAMS, args.customers)
        for level in levels:
            level_results = []
            for kind, (url, pid) in running.items():
                result = measure(kind, url, pid, level, args.customers)
                level_results.append(result)
                all_results[kind].append(result)
            print_level(level_results)
    print("\nratios (same run)")
    by = {k: {r.concurrency: r for r in v} for k, v in all_results.items()}
    at_100 = {kind: levels[100] for kind, levels in by.items() if 100 in levels}
    if at_100:
        print("  server CPU per model piece at concurrency 100: "
              + ", ".join(f"{kind} {cpu_per_piece_us(r):.1f} µs" for kind, r in at_100.items()))
    for baseline, target in [*((raw, "0.5x") for raw in RAW_KINDS), ("langserve", "10x")]:
        if "full" in by and baseline in by and 100 in by["full"]:
            ours, other = by["full"][100], by[baseline][100]
            ratio = (len(ours.completed) / ours.wall_s) / (len(other.completed) / other.wall_s)
            print(f"  streams/s at concurrency 100, full / {baseline}: {ratio:.2f}x (target >= {target})"
                  + (" <- #15's baseline" if baseline == BASELINE else ""))
    for raw in RAW_KINDS:
        if "full" in by and raw in by and 10 in by["full"]:
            overhead = (by["full"][10].percentile("ttft_s", .5) - by[raw][10].percentile("ttft_s", .5)) * 1e3
            print(f"  TTFT p50 overhead over {raw} at concurrency 10: {overhead:.1f} ms (target < 5 ms)")
    for raw in RAW_KINDS:
        if "full" in by and raw in by and 500 in by["full"]:
            ratio = by["full"][500].percentile("ttft_s", .95) / by[raw][500].percentile("ttft_s", .95)
            print(f"  TTFT p95 at concurrency 500, full / {raw}: {ratio:.2f}x (target <= 3x)")
    if "full" in by and 1000 in by["full"]:
        print(f"  errors at 1,000 concurrent streams (full): {by['full'][1000].errors} (target 0)")
    png = args.out / "stream_latency.png"
    plot(all_results, png)
    print(f"\nplot: {png}")


if __name__ == "__main__":
    main()
