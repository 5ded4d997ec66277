"""Background runs (#16): many concurrent runs, watchers joining and leaving, no lost event.

    .venv/bin/python -m bench.workflow_bench [--runs 1000] [--replicas 1|2] [--redis] [--postgres]
        [--watch-fraction 1.0]
        [--steady-watchers 0] [--dump runs.jsonl]

Starts the real service (`uvicorn app.server:app` with the guarded HTTP protocol, as
scripts/run.sh runs it) on a throwaway SQLite DATA_DIR; with `--redis`, on a throwaway
redis-server too, and with `--replicas 2` two such processes share that Redis and that
SQLite file (or, with `--postgres`, a throwaway PostgreSQL: what replicas are meant to
share; one SQLite file makes them wait on its single write lock). After a warm-up run per replica (reported: a run that does not succeed
right after start-up fails the benchmark) and `--settle-s` past start-up:

1. starts `--runs` runs of `realtime/interactions` (local model) concurrently, at most
   `--post-concurrency` POSTs in flight, round-robin over the replicas;
2. gives (a `--watch-fraction` of) the runs one watcher each, half over SSE, half over
   WebSocket. A watcher first joins at once (the run queued or just started), a random
   moment later, or once GET shows the run final; it reads a random number of events
   (sometimes none), leaves (closes, or for some WebSockets drops the TCP connection),
   waits a little and rejoins with the last event id it saw (on the other replica when
   there are two), until it receives `end`. `--steady-watchers N` adds N watchers per
   run that join at once on one replica and stay to the end, so that replica's
   subscription of the run's channel is shared with the watcher that comes and goes;
3. once every run is final, reads each run's whole event log once over SSE from the
   start: the reference;
4. checks, per run and watcher, that the events over all its joins are exactly the
   reference (same ids and payloads, same order, no duplicate, no gap), that the last is
   `end`, that `end` has GET's status and output, that the status is `succeeded`, and
   that the run streamed at least one `data` event.

Prints the totals, a breakdown by watcher kind and by when it first joined, the first
failing runs with each join (for reproduction), and what the servers logged at WARNING
or above. Exits 1 if any run failed a check. The servers' logs are kept under /tmp
(their paths are printed); `--dump` writes every run, watcher and join as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from bench.fanout_bench import raise_fd_limit
from bench.servers import BENCH_SECRET
from bench.stream_bench import request_for
from tests.support.replicas import replica_process
from tests.support.servers import RedisServer, postgres_server

CHAIN = "realtime/interactions"
FINAL = {"succeeded", "failed", "cancelled", "interrupted"}
IDLE_TIMEOUT_S = 60.0  # a join that receives nothing for this long is recorded as stalled
TAIL_TIMEOUT_S = 5.0  # after `end`, the server must end the response / close the socket
PHASES = ("at-once", "during", "after-end")

MESSAGES = [
    "Our dashboard is slow again, can you look at it today?",
    "I was charged twice for the March invoice, please refund the duplicate payment.",
    "Thanks a lot, the new export feature works perfectly for our team!",
    "Can we schedule a demo of the analytics add-on next Tuesday afternoon?",
    "The mobile app crashes every time I open the reports tab on Android.",
    "We are thinking about cancelling our subscription, the price went up too much.",
    "How do I add five more seats to our plan without changing the billing date?",
    "Your support agent Maria was fantastic, she solved our SSO issue in minutes.",
    "The API keeps returning 502 errors since this morning, our integration is down.",
    "Could you send me the security questionnaire and your SOC 2 report?",
    "I can't reset my password, the email with the link never arrives.",
    "We'd like a quote for 200 licences for the whole sales department.",
    "The CSV import silently drops rows that contain accented characters.",
    "Is there a discount if we switch to annual billing this quarter?",
    "This is the third time I report the same bug and nobody answers, very disappointed.",
    "Please update the billing address on our account to 12 Harbour Street, Leeds.",
    "Great webinar yesterday, can you share the slides and the recording?",
    "Our admin left the company, how do we transfer ownership of the workspace?",
    "The calendar sync with Outlook duplicates every meeting since the last update.",
    "We need the contract renewed before Friday or our legal team will block payments.",
]
OPENERS = ["", "Hi team, ", "Hello, ", "Good morning. ", "Hey there! ", "Dear support, "]
CLOSERS = ["", " Thanks.", " Regards, Sam", " Let me know ASAP.", " Cheers!", " Best, the ops team"]
CHANNELS = ["chat", "email", "sms", "web"]


def text_for(rng: random.Random) -> str:
    parts = rng.sample(MESSAGES, rng.choice((1, 1, 2)))
    return rng.choice(OPENERS) + " ".join(parts) + rng.choice(CLOSERS)


def id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


@dataclass
class Join:
    replica: int
    transport: str
    resume_from: str | None
    planned: int | None  # events to read before leaving; None: until `end`
    how: str = "close"  # how it leaves: close, or abort (WebSocket: drop the TCP connection)
    at: float = 0.0
    wall: float = field(default_factory=time.time)  # to compare with the run's started_at/finished_at
    ids: list[str] = field(default_factory=list)
    outcome: str = ""
    first_at: float | None = None  # when its first event arrived
    after_end: bool = False  # a resume from the `end` itself: nothing more may come (SSE: 204)

    def describe(self, t0: float) -> str:
        span = f"{self.ids[0]}..{self.ids[-1]}" if self.ids else "-"
        planned = "all" if self.planned is None else self.planned
        return (f"+{self.at - t0:6.2f}s r{self.replica} {self.transport:<3} resume={self.resume_from or '-':<17} "
                f"plan={planned!s:<3} got={len(self.ids):<3} {span}  -> {self.outcome}")


@dataclass
class Watcher:
    """One client following one run: it joins, leaves and rejoins until it has `end`; a
    steady one joins once at once and reads to the end on one replica, so a watcher that
    comes and goes there shares that replica's subscription of the run's channel."""

    transport: str  # "sse" or "ws"
    phase: str  # when it first joins: PHASES, or "steady"
    replica: int = 0  # a steady watcher's replica
    events: list[dict[str, Any]] = field(default_factory=list)
    joins: list[Join] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    end_at: float | None = None
    done: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def steady(self) -> bool:
        return self.phase == "steady"

    @property
    def group(self) -> str:
        return ("SSE" if self.transport == "sse" else "WebSocket") + (" steady" if self.steady else "")


@dataclass
class Run:
    index: int
    body: dict[str, Any]
    replica: int  # the one POSTed to, which executes it
    watchers: list[Watcher] = field(default_factory=list)
    run_id: str | None = None
    post_status: int = 0
    post_error: str = ""
    posted_at: float = 0.0
    post_latency_s: float = float("nan")
    final: dict[str, Any] | None = None
    reference: list[dict[str, Any]] | None = None
    reference_error: str = ""
    problems: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


class SseStream:
    """A minimal text/event-stream reader over an aiohttp response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def events(self) -> AsyncIterator[tuple[str | None, str, str]]:
        event_id: str | None = None
        kind, data = "message", list[str]()
        async for raw in self.response.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    yield event_id, kind, "\n".join(data)
                event_id, kind, data = None, "message", []
                continue
            if line.startswith(":"):
                continue  # ping
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                event_id = value
            elif name == "event":
                kind = value
            elif name == "data":
                data.append(value)


class Bench:
    def __init__(self, args: argparse.Namespace, urls: list[str], pids: list[int], ready_at: float) -> None:
        self.args = args
        self.ready_at = ready_at  # perf_counter() when the last replica answered /ready
        self.urls = urls
        self.processes = [psutil.Process(pid) for pid in pids]
        self.rng = random.Random(args.seed)
        self.headers = request_for("full", urls[0])[2]
        self.api: aiohttp.ClientSession | None = None
        self.streams: aiohttp.ClientSession | None = None
        self.t0 = 0.0
        self.rss_peak = [0] * len(pids)
        self.threads_peak = [(0, 0)] * len(pids)

    # -- helpers -----------------------------------------------------------------

    def rss(self) -> list[int]:
        return [p.memory_info().rss for p in self.processes]

    def cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes)

    def threads_fds(self) -> list[tuple[int, int]]:
        """Each aiosqlite connection is a thread and a file: a leaked one shows here."""
        return [(p.num_threads(), p.num_fds()) for p in self.processes]

    async def sample_rss(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.rss_peak = [max(a, b) for a, b in zip(self.rss_peak, self.rss())]
            self.threads_peak = [(max(a[0], b[0]), max(a[1], b[1]))
                                 for a, b in zip(self.threads_peak, self.threads_fds())]
            await asyncio.sleep(0.2)

    async def get_run(self, replica: int, run_id: str) -> dict[str, Any]:
        assert self.api is not None
        async with self.api.get(f"{self.urls[replica]}/api/v1/ai/workflows/{run_id}",
                                headers=self.headers) as response:
            text = await response.text()
            if response.status != 200:
                raise RuntimeError(f"GET {run_id}: HTTP {response.status} {text[:200]}")
            return dict(json.loads(text))

    # -- one run: POST, then its watcher --------------------------------------------

    async def post(self, run: Run, gate: asyncio.Semaphore) -> None:
        assert self.api is not None
        async with gate:
            run.posted_at = time.perf_counter()
            try:
                async with self.api.post(f"{self.urls[run.replica]}/api/v1/ai/workflows", json=run.body,
                                         headers=self.headers) as response:
                    run.post_status = response.status
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError) as error:
                run.post_error = repr(error)
                return
            finally:
                run.post_latency_s = time.perf_counter() - run.posted_at
        if run.post_status != 202:
            run.post_error = f"HTTP {run.post_status} {response.content_type}: {text[:200]}"
            return
        run.run_id = json.loads(text)["id"]

    def plan(self) -> int | None:
        draw = self.rng.random()
        if draw < 0.08:
            return 0  # join and leave before reading anything
        if draw < 0.80:
            return self.rng.randint(1, 12)
        return None

    async def watch(self, run: Run, watcher: Watcher) -> None:
        assert run.run_id is not None
        if watcher.phase == "during":
            await asyncio.sleep(self.rng.uniform(0.0, self.args.join_spread_s))
        elif watcher.phase == "after-end":
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            while True:
                await asyncio.sleep(self.rng.uniform(1.0, 2.0))
                try:
                    if (await self.get_run(run.replica, run.run_id))["status"] in FINAL:
                        break
                except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as error:
                    watcher.errors.append(f"GET while waiting: {error!r}"[:300])
        replica = watcher.replica if watcher.steady else self.rng.randrange(len(self.urls))
        while not watcher.done:
            forced = watcher.steady or len(watcher.joins) >= self.args.max_joins
            last_id = watcher.events[-1]["id"] if watcher.events else None
            join = Join(replica, watcher.transport, last_id, None if forced else self.plan(),
                        at=time.perf_counter())
            if join.transport == "ws" and self.rng.random() < 0.3:
                join.how = "abort"
            watcher.joins.append(join)
            try:
                if join.transport == "sse":
                    await self.sse_join(run, watcher, join)
                else:
                    await self.ws_join(run, watcher, join)
            except (aiohttp.ClientError, WebSocketException, OSError, TimeoutError, ValueError) as error:
                join.outcome = f"error {error!r}"[:200]
                watcher.errors.append(join.outcome)
                await asyncio.sleep(0.5)
            if not watcher.done:
                await asyncio.sleep(self.rng.uniform(0.0, 0.25))
                if not watcher.steady:
                    replica = (replica + 1) % len(self.urls)
        if not watcher.steady and self.rng.random() < self.args.resume_after_end:
            # As a client that missed the close does: resume from the `end` it has.
            replica = (replica + 1) % len(self.urls)
            join = Join(replica, watcher.transport, watcher.events[-1]["id"], None, at=time.perf_counter(),
                        after_end=True)
            watcher.joins.append(join)
            try:
                await (self.sse_join if join.transport == "sse" else self.ws_join)(run, watcher, join)
            except (aiohttp.ClientError, WebSocketException, OSError, TimeoutError, ValueError) as error:
                join.outcome = f"error {error!r}"[:200]
                watcher.errors.append(f"resume after end: {join.outcome}")

    def take(self, watcher: Watcher, join: Join, message: dict[str, Any]) -> bool:
        """Records a received event; True when the join should stop reading."""
        join.ids.append(message["id"])
        if join.first_at is None:
            join.first_at = time.perf_counter()
        watcher.events.append(message)
        if join.after_end:
            join.outcome = "an event after `end`"
            return True
        if message["type"] == "end":
            watcher.end_at = time.perf_counter()
            watcher.done = True
            join.outcome = "end"
            return True
        if join.planned is not None and len(join.ids) >= join.planned:
            join.outcome = "left"
            return True
        return False

    async def sse_join(self, run: Run, watcher: Watcher, join: Join) -> None:
        assert self.streams is not None
        headers = dict(self.headers)
        if join.resume_from:
            headers["Last-Event-ID"] = join.resume_from
        response = await self.streams.get(
            f"{self.urls[join.replica]}/api/v1/ai/stream/workflows/{run.run_id}", headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=IDLE_TIMEOUT_S))
        try:
            if join.after_end and response.status == 204:
                join.outcome = "204"
                return
            if response.status != 200:
                join.outcome = f"HTTP {response.status} {(await response.text())[:200]}"
                watcher.errors.append(join.outcome)
                return
            if join.planned == 0:
                join.outcome = "left"
                return
            events = SseStream(response).events()
            async for event_id, kind, data in events:
                message = json.loads(data)
                if kind == "error":
                    join.outcome = f"error event {message}"
                    watcher.errors.append(join.outcome)
                    return
                if event_id != message.get("id") or kind != message.get("type"):
                    watcher.errors.append(
                        f"SSE id/event {event_id}/{kind} != data {message.get('id')}/{message.get('type')}")
                if self.take(watcher, join, message):
                    if join.outcome == "end":
                        try:
                            async with asyncio.timeout(TAIL_TIMEOUT_S):
                                async for extra_id, extra_kind, _ in events:
                                    watcher.errors.append(f"SSE event after end: {extra_kind} {extra_id}")
                        except TimeoutError:
                            watcher.errors.append("SSE response did not end after `end`")
                    return
            join.outcome = "eof before end"
            if join.after_end:
                watcher.errors.append("resume after `end` answered 200 (an empty stream), not 204")
            elif join.planned is None:
                watcher.errors.append(f"SSE stream ended without `end` (join {len(watcher.joins)})")
        finally:
            response.close()

    async def ws_join(self, run: Run, watcher: Watcher, join: Join) -> None:
        base = self.urls[join.replica].replace("http://", "ws://")
        url = f"{base}/ws/ai/workflows/{run.run_id}"
        if join.resume_from:
            url += f"?last_event_id={join.resume_from}"
        # An unbounded queue: with a bounded one the client stops reading the socket when it
        # is full, so a leave mid-run waits close_timeout for a close frame queued behind data.
        async with connect(url, additional_headers=self.headers, open_timeout=60, ping_interval=None,
                           close_timeout=5, max_size=2**22, max_queue=None) as ws:
            if join.planned == 0:
                join.outcome = "left"
                if join.how == "abort":
                    ws.transport.abort()
                return
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), TAIL_TIMEOUT_S if join.after_end else IDLE_TIMEOUT_S)
                except TimeoutError:
                    join.outcome = "stalled"
                    watcher.errors.append(f"WS join {len(watcher.joins)}: nothing for "
                                          f"{TAIL_TIMEOUT_S if join.after_end else IDLE_TIMEOUT_S:.0f} s")
                    return
                except ConnectionClosed as closed:
                    code = closed.rcvd.code if closed.rcvd else None
                    join.outcome = f"closed {code}" + ("" if join.after_end else " before end")
                    if join.after_end:
                        if code != 1000:
                            watcher.errors.append(f"WS resume after `end`: {closed!r}"[:200])
                    elif join.planned is None or code != 1000:
                        watcher.errors.append(f"WS {join.outcome}: {closed!r}"[:200])
                    return
                message = json.loads(raw)
                kind = message.get("type")
                if kind in ("ready", "heartbeat", "pong"):
                    continue
                if kind == "error":
                    join.outcome = f"error message {message}"
                    watcher.errors.append(join.outcome)
                    return
                if self.take(watcher, join, message):
                    break
            if join.outcome == "end":
                try:
                    extra = await asyncio.wait_for(ws.recv(), TAIL_TIMEOUT_S)
                    if json.loads(extra).get("type") not in ("ready", "heartbeat"):
                        watcher.errors.append(f"WS message after end: {extra[:120]!r}")
                except ConnectionClosed as closed:
                    if not closed.rcvd or closed.rcvd.code != 1000:
                        watcher.errors.append(f"WS closed {closed.rcvd.code if closed.rcvd else None} after end")
                except TimeoutError:
                    watcher.errors.append("WS not closed after `end`")
            elif join.how == "abort":
                ws.transport.abort()

    # -- reference and checks ----------------------------------------------------

    async def read_reference(self, run: Run, gate: asyncio.Semaphore, replica: int = 0) -> None:
        assert self.streams is not None and run.run_id is not None
        async with gate:
            events: list[dict[str, Any]] = []
            try:
                response = await self.streams.get(
                    f"{self.urls[replica]}/api/v1/ai/stream/workflows/{run.run_id}", headers=self.headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=IDLE_TIMEOUT_S))
                try:
                    if response.status != 200:
                        run.reference_error = f"HTTP {response.status}"
                        return
                    async for _, kind, data in SseStream(response).events():
                        if kind == "error":
                            run.reference_error = f"error event {data}"
                            return
                        events.append(json.loads(data))
                        if kind == "end":
                            break
                finally:
                    response.close()
            except (aiohttp.ClientError, TimeoutError) as error:
                run.reference_error = repr(error)
                return
            run.reference = events

    def check(self, run: Run) -> None:
        counts, problems = run.counts, run.problems
        if run.run_id is None:
            problems.append(f"POST failed: {run.post_error}")
            counts["not_succeeded"] += 1
            return
        status = (run.final or {}).get("status")
        if status != "succeeded":
            counts["not_succeeded"] += 1
            problems.append(f"GET status {status!r} error={(run.final or {}).get('error')}")
        reference = run.reference or []
        if run.reference is None or not reference or reference[-1]["type"] != "end":
            counts["bad_reference"] += 1
            problems.append(f"reference log incomplete ({run.reference_error or len(reference)} events)")
        ref_keys = [id_key(e["id"]) for e in reference]
        if any(b <= a for a, b in itertools.pairwise(ref_keys)):
            counts["bad_reference"] += 1
            problems.append("reference ids not strictly increasing")
        if not any(e["type"] == "data" for e in reference):
            counts["no_data"] += 1
            problems.append("no `data` event in the reference")
        if reference and reference[-1]["type"] == "end" and run.final is not None:
            end = reference[-1]["data"]
            if end.get("status") != run.final.get("status"):
                problems.append(f"end status {end.get('status')} != GET status {run.final.get('status')}")
                counts["end_mismatch"] += 1
            if end.get("output") != run.final.get("output"):
                problems.append("end output != GET output")
                counts["end_mismatch"] += 1
        for number, watcher in enumerate(run.watchers):
            compare(watcher, reference)
            counts.update(watcher.counts)
            problems.extend(f"watcher {number} ({watcher.group}): {problem}" for problem in watcher.problems)

    # -- the whole benchmark -----------------------------------------------------------

    async def warm_up(self) -> list[str]:
        """Runs on each replica, each read to its end, until one succeeds there, so imports
        and caches are paid for before measuring. Returns what each warm-up run ended as:
        a run that did not succeed right after start-up is worth reporting."""
        outcomes = []
        for replica in range(len(self.urls)):
            for attempt in range(5):
                run = Run(-1, {"chain": CHAIN, "input": {"customer_id": "warm-up", "channel": "chat",
                                                         "text": MESSAGES[attempt]}}, replica)
                await self.post(run, asyncio.Semaphore(1))
                if run.run_id is None:
                    raise RuntimeError(f"warm-up POST failed: {run.post_error}")
                await self.read_reference(run, asyncio.Semaphore(1), replica)
                if not run.reference or run.reference[-1]["type"] != "end":
                    raise RuntimeError(f"warm-up run did not end: {run.reference_error}")
                end = run.reference[-1]["data"]
                outcomes.append(f"r{replica} {run.run_id} {end.get('status')}"
                                + (f" ({end['error'].get('message')})" if end.get("error") else ""))
                if end.get("status") == "succeeded":
                    break
                await asyncio.sleep(1.0)
        return outcomes

    async def run(self) -> dict[str, Any]:
        args = self.args
        connector = aiohttp.TCPConnector(limit=args.post_concurrency * 2)
        streams = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as api, \
                aiohttp.ClientSession(connector=streams) as sse:
            self.api, self.streams = api, sse
            warm_up = await self.warm_up()
            # Past the first AUDIT_HEARTBEAT_S after start-up: a replica whose start-up took
            # longer than AUDIT_PROCESS_DEAD_AFTER_S takes itself for dead until it beats
            # again, and its runs end `interrupted` (the warm-up row shows it).
            await asyncio.sleep(max(1.0, self.ready_at + args.settle_s - time.perf_counter()))
            rss_before = self.rss()
            self.rss_peak = list(rss_before)
            threads_before = self.threads_fds()
            self.threads_peak = list(threads_before)
            cpu_before = self.cpu()
            stop = asyncio.Event()
            sampler = asyncio.create_task(self.sample_rss(stop))

            runs: list[Run] = []
            watched = set(self.rng.sample(range(args.runs), round(args.runs * args.watch_fraction)))
            for index in range(args.runs):
                body = {"chain": CHAIN, "input": {"customer_id": f"bench-cust-{self.rng.randrange(300)}",
                                                  "channel": self.rng.choice(CHANNELS),
                                                  "text": text_for(self.rng)}}
                run = Run(index, body, index % len(self.urls))
                if index in watched:
                    run.watchers.append(Watcher("sse" if index % 2 == 0 else "ws",
                                                self.rng.choices(PHASES, weights=(35, 40, 25))[0]))
                    for k in range(args.steady_watchers):
                        run.watchers.append(Watcher("ws" if (index + k) % 2 == 0 else "sse", "steady",
                                                    self.rng.randrange(len(self.urls))))
                runs.append(run)

            gate = asyncio.Semaphore(args.post_concurrency)
            watchers: list[asyncio.Task[None]] = []

            async def start(run: Run) -> None:
                await self.post(run, gate)
                if run.run_id is not None:
                    watchers.extend(asyncio.create_task(self.watch(run, w)) for w in run.watchers)

            self.t0 = time.perf_counter()
            await asyncio.gather(*(start(run) for run in runs))
            posted_s = time.perf_counter() - self.t0
            hung = False
            if watchers:
                _, pending = await asyncio.wait(watchers, timeout=args.deadline_s)
                hung = bool(pending)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                for task in watchers:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            # Every run final (watched ones are; unwatched ones are polled).
            pending_runs = [r for r in runs if r.run_id is not None]
            deadline = time.perf_counter() + args.deadline_s
            while pending_runs and time.perf_counter() < deadline:
                finals = await asyncio.gather(*(self.get_run(r.replica, r.run_id) for r in pending_runs),  # type: ignore[arg-type]
                                              return_exceptions=True)
                still = []
                for r, found in zip(pending_runs, finals, strict=True):
                    if isinstance(found, dict) and found.get("status") in FINAL:
                        r.final = found
                    else:
                        still.append(r)
                pending_runs = still
                if pending_runs:
                    await asyncio.sleep(0.5)
            all_final_s = time.perf_counter() - self.t0
            stop.set()
            await sampler
            cpu_s = self.cpu() - cpu_before

            reference_gate = asyncio.Semaphore(args.post_concurrency)
            await asyncio.gather(*(self.read_reference(r, reference_gate) for r in runs if r.run_id is not None))
            for run in runs:
                self.check(run)
            return {"runs": runs, "posted_s": posted_s, "all_final_s": all_final_s,
                    "hung": hung, "rss_before": rss_before, "rss_peak": self.rss_peak, "cpu_s": cpu_s,
                    "unfinished": len(pending_runs), "warm_up": warm_up,
                    "threads": (threads_before, self.threads_peak)}


def compare(watcher: Watcher, reference: list[dict[str, Any]]) -> None:
    """The watcher's events over all its joins against the run's whole log."""
    counts, problems = watcher.counts, watcher.problems
    by_id = {e["id"]: e for e in reference}
    seen: set[str] = set()
    highest: tuple[int, int] | None = None
    for event in watcher.events:
        key = id_key(event["id"])
        if event["id"] in seen:
            counts["duplicate"] += 1
            continue
        seen.add(event["id"])
        if highest is not None and key < highest:
            counts["out_of_order"] += 1
        highest = key if highest is None else max(highest, key)
        if event["id"] not in by_id:
            counts["extra"] += 1
        elif by_id[event["id"]] != event:
            counts["payload_mismatch"] += 1
    counts["lost"] += sum(1 for e in reference if e["id"] not in seen)
    counts["delivered"] += len(watcher.events)
    counts["joins"] += len(watcher.joins)
    counts["errors"] += len(watcher.errors)
    if not watcher.done:
        counts["hung"] += 1
        problems.append("never received `end`")
    elif watcher.events[-1]["type"] != "end":
        problems.append("its last event is not `end`")
    for name in ("duplicate", "out_of_order", "extra", "payload_mismatch", "lost"):
        if counts[name]:
            problems.append(f"{name}: {counts[name]}")
    if [e["id"] for e in watcher.events] != [e["id"] for e in reference] and not any(
            counts[n] for n in ("duplicate", "out_of_order", "extra", "lost")):
        problems.append("sequence differs from the reference")
    problems.extend(watcher.errors[:5])


def run_state_at(run: Run, wall: float) -> str:
    """The run's state when a join began, from GET's timestamps (same machine clock)."""
    final = run.final or {}
    started, finished = final.get("started_at"), final.get("finished_at")
    if finished and wall >= datetime.fromisoformat(finished).timestamp():
        return "ended"
    if started and wall >= datetime.fromisoformat(started).timestamp():
        return "running"
    return "queued"


def mb(values: list[int]) -> str:
    return " + ".join(f"{v / 2**20:.0f}" for v in values) + " MB"


def report(args: argparse.Namespace, result: dict[str, Any], t0: float) -> bool:
    runs: list[Run] = result["runs"]
    posted = [r for r in runs if r.run_id is not None]
    watchers = [(r, w) for r in posted for w in r.watchers]
    leaving = [(r, w) for r, w in watchers if not w.steady]
    steady = [(r, w) for r, w in watchers if w.steady]
    total: Counter[str] = Counter()
    for run in runs:
        total.update(run.counts)
    post = [r.post_latency_s for r in posted]
    to_end = [w.end_at - r.posted_at for r, w in leaving if w.end_at is not None]
    early = [w.end_at - r.posted_at for r, w in leaving if w.end_at is not None and w.phase != "after-end"]
    first_event = [j.first_at - j.at for _, w in watchers for j in w.joins if j.first_at is not None]
    server_run = [(r.final["queued_ms"] + r.final["run_ms"]) / 1e3 for r in posted
                  if r.final and r.final.get("run_ms") is not None and r.final.get("queued_ms") is not None]
    first_state = Counter(run_state_at(r, w.joins[0].wall) for r, w in leaving if w.joins)
    join_state = Counter(run_state_at(r, j.wall) for r, w in leaving for j in w.joins)
    states = ("queued", "running", "ended")
    failed = [r for r in runs if r.problems]
    wall = result["all_final_s"]
    joins = sum(len(w.joins) for _, w in leaving)

    def split(group: list[tuple[Run, Watcher]]) -> str:
        sse = sum(1 for _, w in group if w.transport == "sse")
        return f"{len(group)} ({sse} / {len(group) - sse})"

    rows = [
        ("warm-up runs", "; ".join(result["warm_up"])),
        ("runs", f"{len(runs)} ({len(runs) - len(posted)} POSTs failed)"),
        *((f"  POST failed: {error}", str(n)) for error, n in Counter(r.post_error[:90] for r in runs if r.post_error).items()),
        ("replicas", str(args.replicas)),
        ("redis", "yes" if args.redis else "no"),
        ("database", "PostgreSQL" if args.postgres else "SQLite"),
        ("watchers (SSE / WS)", split(leaving)),
    ]
    if steady:
        rows.append(("steady watchers, one join each (SSE / WS)", split(steady)))
    rows += [
        ("first join at-once / during / after-end",
         " / ".join(str(sum(1 for _, w in leaving if w.phase == p)) for p in PHASES)),
        ("first join while run queued / running / ended", " / ".join(str(first_state[s]) for s in states)),
        ("joins total", f"{joins} ({joins / max(1, len(leaving)):.1f} per watcher)"),
        ("joins while run queued / running / ended", " / ".join(str(join_state[s]) for s in states)),
        ("events delivered", str(total["delivered"])),
        ("events in reference logs", str(sum(len(r.reference or []) for r in runs))),
        ("lost events", str(total["lost"])),
        ("duplicate events", str(total["duplicate"])),
        ("out-of-order events", str(total["out_of_order"])),
        ("events not in the reference (unknown ids)", str(total["extra"])),
        ("events with another payload than reference", str(total["payload_mismatch"])),
        ("watchers without `end` (hung)", str(total["hung"])),
        ("watcher errors (HTTP, error events, closes)", str(total["errors"])),
        ("runs not succeeded", str(total["not_succeeded"])),
        ("runs with `end` != GET", str(sum(1 for r in runs if r.counts["end_mismatch"]))),
        ("runs failing any check", str(len(failed))),
        ("all POSTs answered", f"{result['posted_s']:.1f} s"),
        ("wall time (first POST -> all runs final)", f"{wall:.1f} s"),
        ("runs/s", f"{len(runs) / wall:.1f}"),
        ("POST latency p50 / p95", f"{pct(post, .5) * 1e3:.0f} / {pct(post, .95) * 1e3:.0f} ms"),
        ("POST -> `end` received p50 / p95 (all)", f"{pct(to_end, .5):.2f} / {pct(to_end, .95):.2f} s"),
        ("  same, watchers not waiting for the end", f"{pct(early, .5):.2f} / {pct(early, .95):.2f} s"),
        ("join -> its first event p50 / p95 / max",
         f"{pct(first_event, .5):.2f} / {pct(first_event, .95):.2f} / {pct(first_event, 1.0):.2f} s"),
        ("run queued+running (server) p50 / p95", f"{pct(server_run, .5):.2f} / {pct(server_run, .95):.2f} s"),
        ("server CPU during the runs", f"{result['cpu_s']:.1f} s"),
        ("server RSS before", mb(result["rss_before"])),
        ("server RSS peak", mb(result["rss_peak"])),
        ("server threads / open fds before -> peak", ";  ".join(
            " -> ".join(f"{t}/{f}" for t, f in per) for per in zip(*result["threads"]))),
    ]
    width = max(len(k) for k, _ in rows)
    title = f"background runs: {len(runs)} runs, {args.replicas} replica(s), redis {'yes' if args.redis else 'no'}"
    print(f"\n{title}")
    print(f"{'metric':<{width}}  value")
    print("-" * (width + 30))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")

    def breakdown(label: str, groups: list[tuple[str, list[Watcher]]]) -> None:
        header = (f"{label:<16} {'watchers':>8} {'joins':>6} {'events':>7} {'lost':>5} {'dup':>4} {'ooo':>4} "
                  f"{'extra':>5} {'hung':>4} {'errors':>6} {'failing':>7}")
        print(f"\n{header}\n{'-' * len(header)}")
        for name, members in groups:
            if not members:
                continue
            c: Counter[str] = Counter()
            for w in members:
                c.update(w.counts)
            bad = sum(1 for w in members if w.problems)
            print(f"{name:<16} {len(members):>8} {c['joins']:>6} {c['delivered']:>7} {c['lost']:>5} "
                  f"{c['duplicate']:>4} {c['out_of_order']:>4} {c['extra']:>5} {c['hung']:>4} {c['errors']:>6} {bad:>7}")

    groups = ("SSE", "WebSocket", "SSE steady", "WebSocket steady")
    breakdown("watcher", [(g, [w for _, w in watchers if w.group == g]) for g in groups])
    breakdown("first join", [(p, [w for _, w in leaving if w.phase == p]) for p in PHASES])

    if failed:
        print(f"\nfirst failing runs (of {len(failed)}); each join as: time since first POST, replica, transport, "
              f"Last-Event-ID sent, events planned, events got, ids -> outcome")
        for run in failed[:args.show_failures]:
            print(f"\n  run {run.run_id} (#{run.index}, POSTed to r{run.replica}):")
            for problem in run.problems:
                print(f"    ! {problem}")
            ref_ids = [e["id"] for e in run.reference or []]
            ref_by_id = {e["id"]: e for e in run.reference or []}
            print(f"    reference ({len(ref_ids)}): {' '.join(ref_ids)}")
            for number, watcher in enumerate(run.watchers):
                got_ids = [e["id"] for e in watcher.events]
                print(f"    watcher {number}, {watcher.group}, first join {watcher.phase}"
                      + (" (as the reference)" if got_ids == ref_ids else f" ({len(got_ids)}): {' '.join(got_ids)}"))
                for e in watcher.events:
                    if e["id"] not in ref_by_id:
                        print(f"      unknown event {e['id']} {e['type']} created_at={e.get('created_at')} "
                              f"data={json.dumps(e['data'])[:160]}")
                for join in watcher.joins:
                    print(f"      {join.describe(t0)}")
    warm_up_failed = [w for w in result["warm_up"] if not w.endswith(" succeeded")]
    if warm_up_failed:
        print(f"\n{len(warm_up_failed)} warm-up run(s) right after start-up did not succeed: {'; '.join(warm_up_failed)}")
    return not failed and not warm_up_failed and not result["hung"] and not result["unfinished"]


def dump(runs: list[Run], path: Path, t0: float) -> None:
    """One JSON line per run, times in seconds since the first POST, for a closer look."""
    with path.open("w") as out:
        for run in runs:
            out.write(json.dumps({
                "index": run.index, "run_id": run.run_id, "replica": run.replica, "post_error": run.post_error,
                "posted_at": run.posted_at - t0, "post_latency_s": run.post_latency_s,
                "status": (run.final or {}).get("status"), "started_at": (run.final or {}).get("started_at"),
                "finished_at": (run.final or {}).get("finished_at"), "problems": run.problems,
                "reference": [e["id"] for e in run.reference or []],
                "watchers": [{
                    "transport": w.transport, "phase": w.phase, "errors": w.errors,
                    "end_at": w.end_at - t0 if w.end_at else None, "ids": [e["id"] for e in w.events],
                    "joins": [{"at": j.at - t0, "wall": j.wall, "replica": j.replica, "resume_from": j.resume_from,
                               "planned": j.planned, "how": j.how, "ids": j.ids, "outcome": j.outcome,
                               "first_at": j.first_at - t0 if j.first_at else None} for j in w.joins],
                } for w in run.watchers],
            }) + "\n")
    print(f"\nruns written to {path}")


LOG_LINE = re.compile(r"Traceback|ERROR|CRITICAL|WARNING|Exception|exception")


def scan_logs(paths: list[Path]) -> None:
    print("\nserver logs:")
    for path in paths:
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        hits = [line for line in text if LOG_LINE.search(line)]
        kinds = Counter(re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+", "#", line)[:160] for line in hits)
        print(f"  {path}: {len(text)} lines, {len(hits)} at WARNING or above / tracebacks")
        for line, count in kinds.most_common(8):
            print(f"    {count:>5} x {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--replicas", type=int, choices=(1, 2), default=1)
    parser.add_argument("--redis", action="store_true", help="share events through a throwaway redis-server")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite")
    parser.add_argument("--watch-fraction", type=float, default=1.0, help="runs that get a watcher")
    parser.add_argument("--post-concurrency", type=int, default=50)
    parser.add_argument("--max-joins", type=int, default=30, help="past it a watcher reads to the end")
    parser.add_argument("--steady-watchers", type=int, default=0,
                        help="per run, watchers that join at once on one replica and stay to the end")
    parser.add_argument("--join-spread-s", type=float, default=1.0, help="'during' watchers join within it")
    parser.add_argument("--deadline-s", type=float, default=300.0, help="watchers still going then are hung")
    parser.add_argument("--resume-after-end", type=float, default=0.25,
                        help="share of watchers that, having `end`, resume once more from it (must get nothing)")
    parser.add_argument("--settle-s", type=float, default=12.0,
                        help="measure from this long after the servers are ready (after the warm-up runs)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--show-failures", type=int, default=5)
    parser.add_argument("--log-dir", type=Path, default=None, help="server logs (default: a new dir in /tmp)")
    parser.add_argument("--dump", type=Path, default=None,
                        help="write every run (watchers, joins, events' ids, reference ids) as JSON lines here")
    args = parser.parse_args()
    if args.replicas > 1 and not args.redis:
        parser.error("--replicas 2 needs --redis: the in-process event bus is per process")
    if args.replicas > 1 and not args.postgres:
        print("note: replicas sharing one SQLite file wait on its single write lock; "
              "replicas are meant to share PostgreSQL (--postgres)", flush=True)
    if not 0 <= args.watch_fraction <= 1:
        parser.error("--watch-fraction is between 0 and 1")

    # A SIGTERM (or Ctrl-C) unwinds through the context managers, which stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()  # inherited by the servers too
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="workflow_bench-", dir="/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"replica-{i}.log" for i in range(args.replicas)]
    ok = False
    with tempfile.TemporaryDirectory(prefix="workflow_bench-data-") as data_dir, ExitStack() as stack:
        env = {
            "AUTH_JWT_SECRET": BENCH_SECRET, "APP_ENV": "test", "DATA_DIR": data_dir,
            "DATA_ENCRYPTION_KEY": "bench-data-encryption-key-0123456789abcdef", "LLM_PROVIDERS": "local",
            "RATE_LIMIT_TENANT": "1000000/minute", "RATE_LIMIT_USER": "1000000/minute",
            "WORKFLOW_MAX_ACTIVE_PER_TENANT": "100000",
        }
        if args.postgres:
            env["DATABASE_URL"] = stack.enter_context(postgres_server())
        if args.redis:
            redis = RedisServer(Path(data_dir) / "redis")
            stack.callback(redis.stop)  # before start: a start that fails half-way is stopped too
            redis.start()
            env["REDIS_URL"] = redis.url
        urls, pids = [], []
        for log in logs:  # one after the other: the first one migrates the database
            url, process = stack.enter_context(replica_process(env, log, startup_timeout_s=120))
            urls.append(url)
            pids.append(process.pid)
        print(f"servers {', '.join(urls)} (pids {', '.join(map(str, pids))}), logs in {log_dir}", flush=True)
        bench = Bench(args, urls, pids, time.perf_counter())
        result = asyncio.run(bench.run())
        ok = report(args, result, bench.t0)
        if args.dump:
            dump(result["runs"], args.dump, bench.t0)
    scan_logs(logs)  # after the servers stopped: their shutdown is logged too
    print(f"\n{'PASS' if ok else 'FAIL'}: seed {args.seed}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
