"""A burst of customer history reads: what one batched statement costs the event loop,
with the statement built for every batch (as before e90d1f3) against built once per
shape (as the service does), in the same run.

    python -m bench.history_bench [--widths 1,8,32,128] [--rounds 20]

`InteractionLog.recent` for `width` distinct customers at once (one batch, one
statement), three rows each, on a SQLite file; p50 / max wall time of the burst, and
the time the statement's construction and cache key alone take. The two sides run the
same code but for the statement's cache: the baseline swaps the cached builder for the
same function uncached.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import CompoundSelect

import app.store.interactions as history
from app.core.config import Settings
from app.core.encryption_keys import keyring
from app.store.database import create_engine, database_url, migrate

TENANT = "bench-tenant"


def build_ms(builder: Callable[[int], CompoundSelect], width: int, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        builder(width)._generate_cache_key()
    return (time.perf_counter() - started) / rounds * 1e3


async def burst_ms(log: history.InteractionLog, width: int, rounds: int) -> list[float]:
    took = []
    for _ in range(rounds):
        started = time.perf_counter()
        await asyncio.gather(*(log.recent(TENANT, f"c{n}", limit=3) for n in range(width)))
        took.append((time.perf_counter() - started) * 1e3)
    return took


async def main(widths: list[int], rounds: int) -> None:
    cached, uncached = history._history_statement, history._history_statement.__wrapped__
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(database_url(None, Path(tmp) / "history.sqlite3"))
        await migrate(engine)
        log = history.InteractionLog(engine, keyring(Settings(data_dir=Path(tmp)), engine))
        for n in range(max(widths)):
            for _ in range(3):
                await log.record(TENANT, f"c{n}", "email", {"summary": f"customer {n}"})
        print(f"{'width':>5} {'side':<22} {'burst p50':>10} {'burst max':>10} {'build+key':>10}")
        for width in widths:
            for side, builder in (("built per batch", uncached), ("built once per shape", cached)):
                history._history_statement = builder  # type: ignore[assignment]
                await burst_ms(log, width, 2)  # warm: the compiled cache, the connection
                took = await burst_ms(log, width, rounds)
                print(f"{width:>5} {side:<22} {statistics.median(took):>8.1f}ms {max(took):>8.1f}ms "
                      f"{build_ms(builder, width, rounds):>8.2f}ms")
        history._history_statement = cached
        await log.close()
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", default="1,8,32,128")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main([int(w) for w in args.widths.split(",")], args.rounds))
