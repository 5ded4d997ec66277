"""Scale across processes: this service as one process vs `uvicorn --workers N` vs N
replicas (separate processes, the client taking turns between them).

    .venv/bin/python -m bench.scaling_bench [--workers 2] [--concurrency 100] [--streams 300] [--rounds 3]
        [--cpus-per-process 0.4] [--per-process] [--baseline raw-model-coalesced]

Every configuration runs the full server of `bench.servers` (the interaction chain
streaming the fake provider's JSON analysis) over the same throwaway redis-server and
PostgreSQL, which is how processes share push, replay, rate limits, the cache and the
cluster-wide provider slots. Rounds alternate the configurations, so drift on a shared
machine hits each; the ratio of each round and the worst are printed.

The load client, Redis and PostgreSQL run on the same machine and take CPU from the
servers: on 2 cores, N=2 processes compete with them and cannot show N times one. With
`--cpus-per-process`, every serving process (the one process, each worker, each replica,
with its analysis pool) is held to that share of a core by a CPU quota (`bench.cpu_quota`),
as if each had a core of its own that fast: the one process and each of the N are
capped alike, and the rest of the machine is left to the client and the shared servers.

By default every configuration gets the same load (N processes share it); with
`--per-process` each serving process gets the load one process gets, so N processes
serve N times the concurrency (what adding a replica for more traffic looks like). The
two differ because a process batches its database work by what queues up meanwhile: one
process holding 100 streams fills its batches three to five times fuller than each of
two holding 50 (README, "Scale across processes").

`--baseline KIND` also runs one of the raw servers of `bench.servers` (no database, no
Redis, nothing shared between its processes) as 1 process and N replicas, in the same
rounds and under the same quota, or under `--baseline-cpus-per-process` (0.2 gives
raw-model-coalesced about our streams/s, so the client and the machine carry the same
load): how close to N times one process this machine lets a server come that shares
nothing, against which ours is read.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.cpu_quota import CpuQuota, cpu_quota
from bench.load import LevelResult
from bench.stream_bench import RAW_KINDS, one_round, server
from tests.support.servers import RedisServer, postgres_server


@dataclass
class Configuration:
    name: str
    servers: list[tuple[str, int]]  # (url, pid of the process started)
    workers: int = 1  # uvicorn workers per server started
    groups: list[Path] = field(default_factory=list)  # its CPU quota cgroups, if confined
    kind: str = "full"  # which of `bench.servers` it runs
    cpus: float | None = None  # its processes' CPU quota, if not the bench's

    @property
    def processes(self) -> int:
        return self.workers * len(self.servers)

    def serving_pids(self) -> list[int]:
        """The processes that serve streams, each with its analysis pool below it: a server
        itself, or, under uvicorn's supervisor, its workers (its other child,
        multiprocessing's resource tracker, serves nothing)."""
        if self.workers == 1:
            return [pid for _, pid in self.servers]
        pids = [child.pid for _, pid in self.servers for child in psutil.Process(pid).children()
                if "spawn_main" in " ".join(child.cmdline())]
        if len(pids) != self.processes:
            raise RuntimeError(f"{self.name}: {len(pids)} uvicorn workers running, expected {self.processes}")
        return pids

    def round(self, concurrency: int, streams: int) -> LevelResult:
        """One round; `extra["machine_cores"]` is how busy the whole machine was meanwhile
        (servers, client, Redis, PostgreSQL): near its core count, they competed."""
        before = psutil.cpu_times()
        result = one_round(self.kind, self.servers, concurrency, streams)
        after = psutil.cpu_times()
        busy = sum(getattr(after, kind) - getattr(before, kind)
                   for kind in ("user", "nice", "system", "irq", "softirq"))
        result.extra["machine_cores"] = busy / result.wall_s
        return result


def streams_per_s(result: LevelResult) -> float:
    return len(result.completed) / result.wall_s


def pooled_streams_per_s(results: list[LevelResult]) -> float:
    """A configuration's rounds read as one run (`LevelResult.pooled`): a round that met a
    slow moment of the shared machine weighs by its length, not as one ratio in five."""
    return streams_per_s(LevelResult.pooled(results))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2, help="N, for both the workers and the replicas")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-process", action="store_true",
                        help="--concurrency and --streams are per serving process: N processes get N times "
                             "the load of one (weak scaling), not the same load split N ways")
    parser.add_argument("--cpus-per-process", type=float, default=None,
                        help="hold each serving process to this share of a core (needs root)")
    parser.add_argument("--baseline", choices=RAW_KINDS, default=None,
                        help="also run this raw server (no database, no Redis, nothing shared) as 1 process and "
                             "N replicas, interleaved with ours: how far this machine lets any server scale")
    parser.add_argument("--baseline-cpus-per-process", type=float, default=None,
                        help="the baseline's quota, if not --cpus-per-process: one that gives it about our "
                             "streams/s puts the same load on the client and the machine")
    args = parser.parse_args()
    if args.baseline_cpus_per_process and not (args.baseline and args.cpus_per_process):
        parser.error("--baseline-cpus-per-process needs --baseline and --cpus-per-process")
    rows: list[tuple[int, str, LevelResult, float]] = []
    n = args.workers
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        quota: CpuQuota | None = (stack.enter_context(cpu_quota(args.cpus_per_process))
                                  if args.cpus_per_process else None)
        redis = RedisServer(Path(tmp) / "redis")
        stack.callback(redis.stop)
        redis.start()
        # One database, one Redis, one data key: processes that share them share the key too.
        env = {"REDIS_URL": redis.url, "DATABASE_URL": stack.enter_context(postgres_server()),
               "DATA_ENCRYPTION_KEY": "bench-data-encryption-key-0123456789abcdef"}

        def start(name: str, workers: int, kind: str = "full") -> tuple[str, int]:
            return stack.enter_context(server(kind, Path(tmp) / name, workers=workers, env=env))

        configurations = [
            Configuration("1 process", [start("one", 1)]),
            Configuration(f"{n} workers", [start("workers", n)], workers=n),
            Configuration(f"{n} replicas", [start(f"replica-{i}", 1) for i in range(n)]),
        ]
        if args.baseline:
            configurations += [
                Configuration(f"{args.baseline}, 1 process", [start("raw-one", 1, args.baseline)],
                              kind=args.baseline, cpus=args.baseline_cpus_per_process),
                Configuration(f"{args.baseline}, {n} replicas",
                              [start(f"raw-replica-{i}", 1, args.baseline) for i in range(n)],
                              kind=args.baseline, cpus=args.baseline_cpus_per_process),
            ]
        for configuration in configurations:  # warm up every process: imports, models, pools
            configuration.round(8, 32 * len(configuration.servers))
            if quota:
                configuration.groups = [quota.confine(pid, configuration.cpus)
                                        for pid in configuration.serving_pids()]
        for round_number in range(1, args.rounds + 1):
            for configuration in configurations:
                scale = configuration.processes if args.per_process else 1
                held_before = quota.throttled_s(configuration.groups) if quota else 0.0
                result = configuration.round(args.concurrency * scale, args.streams * scale)
                held = (quota.throttled_s(configuration.groups) - held_before) if quota else 0.0
                rows.append((round_number, configuration.name, result, held))
    capped = (f", each serving process held to {args.cpus_per_process} of a core"
              if args.cpus_per_process else "")
    if args.cpus_per_process and args.baseline and args.baseline_cpus_per_process:
        capped += f" ({args.baseline}'s to {args.baseline_cpus_per_process})"
    per = " per serving process" if args.per_process else ""
    print(f"\nscaling at concurrency {args.concurrency}{per}, {args.streams} streams a round{per}, "
          f"servers on Redis + PostgreSQL{capped}")
    print("| round | server | concurrency | streams/s | errors | TTFT p50 | e2e p50 | server CPU s | cores used | "
          "CPU ms/stream | held by quota s | machine cores busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for round_number, name, r, held in rows:
        print(f"| {round_number} | {name} | {r.concurrency} | {streams_per_s(r):.1f} | {r.errors} | "
              f"{r.percentile('ttft_s', .5) * 1e3:.0f} ms | {r.percentile('e2e_s', .5) * 1e3:.0f} ms | "
              f"{r.cpu_s:.2f} | {r.cpu_s / r.wall_s:.2f} | {r.cpu_s / max(1, len(r.completed)) * 1e3:.1f} | "
              f"{held:.1f} | {r.extra['machine_cores']:.2f} |")
    pairs = [(f"{n} workers", "1 process"), (f"{n} replicas", "1 process")]
    if args.baseline:
        pairs.append((f"{args.baseline}, {n} replicas", f"{args.baseline}, 1 process"))
    for name, one in pairs:
        ratios = []
        for round_number in range(1, args.rounds + 1):
            by_name = {row_name: r for number, row_name, r, _ in rows if number == round_number}
            ratios.append(streams_per_s(by_name[name]) / streams_per_s(by_name[one]))
        pooled = pooled_streams_per_s([r for _, row_name, r, _ in rows if row_name == name]) / \
            pooled_streams_per_s([r for _, row_name, r, _ in rows if row_name == one])
        print(f"\n{name} / {one}, streams/s per round: " + ", ".join(f"{ratio:.2f}x" for ratio in ratios)
              + f"; worst {min(ratios):.2f}x; all rounds pooled {pooled:.2f}x"
              + (" (target >= 1.8x)" if one == "1 process" else " (the baseline: what this machine allows)"))


if __name__ == "__main__":
    main()
