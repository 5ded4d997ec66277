"""Scale across processes: this service as one process vs `uvicorn --workers N`.

    .venv/bin/python -m bench.scaling_bench [--workers 2] [--concurrency 100] [--streams 300] [--rounds 3]

Both configurations run the full server of `bench.servers` (the interaction chain
streaming the fake provider's 400-piece JSON analysis) over the same throwaway
redis-server and PostgreSQL, which is how processes share push, replay, rate limits,
the cache and the cluster-wide provider slots. Rounds alternate one process and N
workers, so drift on a shared machine hits both; the ratio of each round and the worst
one are printed. The load client runs on the same machine and takes CPU from the
servers: on 2 cores, N=2 workers compete with it, which the table's CPU column shows.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.load import LevelResult, count_text_chunk, run_level
from bench.stream_bench import request_for, server
from tests.support.servers import RedisServer, postgres_server


def streams_per_s(result: LevelResult) -> float:
    return len(result.completed) / result.wall_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: list[tuple[int, str, LevelResult]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        redis = RedisServer(Path(tmp) / "redis")
        stack.callback(redis.stop)
        redis.start()
        # One database, one Redis, one data key: processes that share them share the key too.
        env = {"REDIS_URL": redis.url, "DATABASE_URL": stack.enter_context(postgres_server()),
               "DATA_ENCRYPTION_KEY": "bench-data-encryption-key-0123456789abcdef"}
        configurations = {"1 process": 1, f"{args.workers} workers": args.workers}
        running = {name: stack.enter_context(server("full", Path(tmp) / name.replace(" ", "-"),
                                                    workers=workers, env=env))
                   for name, workers in configurations.items()}
        for name, (url, pid) in running.items():  # warm up every worker: imports, models, pools
            target, body, headers = request_for("full", url)
            asyncio.run(run_level(name, target, [body], headers, pid, 8, 32, count_text_chunk))
        for round_number in range(1, args.rounds + 1):
            for name, (url, pid) in running.items():
                target, body, headers = request_for("full", url)
                rows.append((round_number, name, asyncio.run(run_level(
                    name, target, [body], headers, pid, args.concurrency, args.streams, count_text_chunk))))
    print(f"\nscaling at concurrency {args.concurrency}, {args.streams} streams a round, "
          "servers on Redis + PostgreSQL")
    print("| round | server | streams/s | errors | TTFT p50 | e2e p50 | server CPU s | CPU ms/stream |")
    print("|---|---|---|---|---|---|---|---|")
    for round_number, name, r in rows:
        print(f"| {round_number} | {name} | {streams_per_s(r):.1f} | {r.errors} | "
              f"{r.percentile('ttft_s', .5) * 1e3:.0f} ms | {r.percentile('e2e_s', .5) * 1e3:.0f} ms | "
              f"{r.cpu_s:.1f} | {r.cpu_s / max(1, len(r.completed)) * 1e3:.0f} |")
    ratios = []
    for round_number in range(1, args.rounds + 1):
        one, many = (r for n, _, r in rows if n == round_number)
        ratios.append(streams_per_s(many) / streams_per_s(one))
    print(f"\n{args.workers} workers / 1 process, streams/s per round: "
          + ", ".join(f"{ratio:.2f}x" for ratio in ratios) + f"; worst {min(ratios):.2f}x (target >= 1.8x)")


if __name__ == "__main__":
    main()
