"""Overload: offered load at 2x capacity, 10% high-value requests.

    .venv/bin/python -m bench.overload_bench [--seconds 20] [--slots 8] [--traffic varied|repeated]
        [--repeat-share 0.1]

The provider is paced like a real LLM (50 chunks, 10 ms apart: ~0.5 s per answer) and
the service has `--slots` of it, so capacity is slots / 0.5 s runs per second. An
open-loop client sends Poisson arrivals at twice that rate to the interaction chain's
`/stream` and records, per request, the time to its first result and whether it came
back degraded. Goodput is the share of requests whose first result arrived within the
2 s deadline. High-value latency is compared with the same requests unloaded.

Traffic (`--traffic`): `varied` (the default) sends the 320 messages of the local
model's dev split (written apart from its rules, in many styles) from 50 customers, a
`--repeat-share` of them a customer re-sending one of its own earlier messages, so a
degraded answer mostly has to come from the local analysis of that very message, as in
real traffic; `repeated` is the earlier traffic (one sentence, a number changing), where
nearly every degraded answer is a cache hit.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.stream_bench import request_for, server

CHUNKS = 50
DELAY_S = 0.01
CUSTOMERS = 50
DEV_MESSAGES = Path(__file__).resolve().parents[1] / "chains" / "local" / "corpus" / "dev.csv"


@dataclass
class Outcome:
    high_value: bool
    ok: bool
    ttft_s: float
    e2e_s: float
    degraded: bool
    reason: str | None


@dataclass(frozen=True)
class Message:
    customer_id: str
    channel: str
    text: str


class Traffic:
    """What customers send: varied messages with some re-sent, or the one old sentence."""

    def __init__(self, kind: str, repeat_share: float, rng: random.Random) -> None:
        self.kind = kind
        self.repeat_share = repeat_share
        self.rng = rng
        with open(DEV_MESSAGES, newline="") as handle:
            self.pool = [(row["channel"], row["text"]) for row in csv.DictReader(handle)]
        self.sent: dict[str, list[tuple[str, str]]] = {}

    def next(self, index: int) -> Message:
        if self.kind == "repeated":
            return Message(f"c-{index % CUSTOMERS}", "chat",
                           f"Request {index}: our campaign report is late, can you check today?")
        customer = f"c-{self.rng.randrange(CUSTOMERS)}"
        earlier = self.sent.setdefault(customer, [])
        if earlier and self.rng.random() < self.repeat_share:
            channel, text = self.rng.choice(earlier)
            return Message(customer, channel, text)
        channel, text = self.rng.choice(self.pool)
        earlier.append((channel, text))
        return Message(customer, channel, text)


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str], high_value: bool,
              message: Message) -> Outcome:
    body = {"input": {"customer_id": message.customer_id, "channel": message.channel, "text": message.text,
                      "customer_tier": "high_value" if high_value else "standard"}}
    started = time.perf_counter()
    first = None
    degraded, reason, event = False, None, None
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                return Outcome(high_value, False, 0, 0, False, f"HTTP {response.status}")
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "data":
                    first = first or time.perf_counter()
                    chunk = json.loads(line[6:])
                    if chunk.get("degraded"):
                        degraded, reason = True, chunk.get("degraded_reason")
        ok = event == "end"
    except aiohttp.ClientError as error:
        return Outcome(high_value, False, 0, 0, False, type(error).__name__)
    end = time.perf_counter()
    return Outcome(high_value, ok, (first or end) - started, end - started, degraded, reason)


async def open_loop(url: str, headers: dict[str, str], rate: float, seconds: float,
                    high_share: float, traffic: Traffic, seed: int = 7) -> list[Outcome]:
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks = []
        started = time.perf_counter()
        at = 0.0
        index = 0
        while at < seconds:
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            message = traffic.next(index)
            tasks.append(asyncio.create_task(one(session, url, headers, rng.random() < high_share, message)))
            index += 1
            at += rng.expovariate(rate)
        return list(await asyncio.gather(*tasks))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--traffic", choices=("varied", "repeated"), default="varied")
    parser.add_argument("--repeat-share", type=float, default=0.1, help="varied traffic: messages re-sent")
    args = parser.parse_args()
    run_s = CHUNKS * DELAY_S
    capacity = args.slots / run_s
    os.environ.update({"BENCH_CHUNKS": str(CHUNKS), "BENCH_TOKEN_DELAY_S": str(DELAY_S),
                       "SCHEDULER_MAX_CONCURRENCY": str(args.slots)})
    with tempfile.TemporaryDirectory() as tmp, server("full", Path(tmp)) as (base, _pid):
        url, _, headers = request_for("full", base)
        unloaded = asyncio.run(open_loop(url, headers, rate=capacity / 8, seconds=5, high_share=1.0,
                                         traffic=Traffic(args.traffic, 0.0, random.Random(1)), seed=1))
        traffic = Traffic(args.traffic, args.repeat_share, random.Random(7))
        loaded = asyncio.run(open_loop(url, headers, rate=2 * capacity, seconds=args.seconds, high_share=0.1,
                                       traffic=traffic))
    served = [o for o in loaded if o.ok and o.ttft_s <= 2.0]
    high = [o for o in loaded if o.high_value]
    first_sends = sum(len(sent) for sent in traffic.sent.values())
    print(f"traffic: {args.traffic}" + (f", {len(traffic.pool)} distinct dev messages from {CUSTOMERS} customers, "
                                         f"{1 - first_sends / max(1, len(loaded)):.1%} re-sent"
                                         if args.traffic == "varied" else ""))
    print(f"capacity {capacity:.0f} runs/s ({args.slots} slots x {run_s:.1f} s runs); offered "
          f"{2 * capacity:.0f} req/s for {args.seconds:.0f} s: {len(loaded)} requests, "
          f"{sum(o.high_value for o in loaded)} high-value")
    print(f"{'':<28} {'all':>10} {'high-value':>11} {'standard':>10}")
    groups = {"all": loaded, "high-value": high, "standard": [o for o in loaded if not o.high_value]}
    rows = [
        ("failed", lambda g: f"{sum(not o.ok for o in g)}"),
        ("first result <= 2 s", lambda g: f"{sum(o.ok and o.ttft_s <= 2 for o in g) / max(1, len(g)):.1%}"),
        ("degraded", lambda g: f"{sum(o.degraded for o in g) / max(1, len(g)):.1%}"),
        ("ttft p50 (ms)", lambda g: f"{pct([o.ttft_s for o in g if o.ok], .5) * 1e3:.0f}"),
        ("ttft p95 (ms)", lambda g: f"{pct([o.ttft_s for o in g if o.ok], .95) * 1e3:.0f}"),
        ("ttft max (ms)", lambda g: f"{max([o.ttft_s for o in g if o.ok] or [0]) * 1e3:.0f}"),
        ("end-to-end p95 (ms)", lambda g: f"{pct([o.e2e_s for o in g if o.ok], .95) * 1e3:.0f}"),
    ]
    for label, cell in rows:
        print(f"{label:<28} {cell(groups['all']):>10} {cell(groups['high-value']):>11} {cell(groups['standard']):>10}")
    reasons: dict[str, int] = {}
    for o in loaded:
        if o.reason:
            reasons[o.reason] = reasons.get(o.reason, 0) + 1
    print(f"degraded reasons: {reasons}")
    unloaded_p95 = pct([o.e2e_s for o in unloaded if o.ok], .95)
    loaded_p95 = pct([o.e2e_s for o in high if o.ok], .95)
    print(f"\ngoodput (first result within 2 s): {len(served) / len(loaded):.2%} (target >= 99%)")
    print(f"high-value within 2 s: {sum(o.ok and o.ttft_s <= 2 for o in high)}/{len(high)} (target all)")
    print(f"high-value end-to-end p95: {loaded_p95 * 1e3:.0f} ms loaded vs {unloaded_p95 * 1e3:.0f} ms unloaded "
          f"({loaded_p95 / unloaded_p95:.2f}x)")


if __name__ == "__main__":
    main()
