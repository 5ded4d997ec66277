"""Process-wide interpreter tuning for serving streams: the collector and the GIL's
switch interval. Kept apart from the app's wiring so that the benchmarks' baseline
servers can be given the same generic tuning the service has."""

from __future__ import annotations

import gc
import sys

from app.core.config import Settings

_gc_tuned = False
# A large young generation: collected less often, streaming spends less CPU per token.
# Its price is the length of a pass: in a process holding 10,000 WebSockets a young object
# costs 1-3 µs to scan, so a pass of 20,000 pauses the loop 22-78 ms, and a fan-out caught
# behind one can near 100 ms (bench/fanout_bench.py). (1,000, 10, 20) was measured on
# 2026-12-03 and not adopted: its young passes stayed under 5 ms, but its middle ones
# paused 12-56 ms while publishing, streaming cost ~10% more CPU per token, and while
# 10,000 sessions connected it made five more full passes, of 0.14-0.69 s each (README,
# Benchmarks).
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc_once() -> None:
    """Makes the collector cheap for streaming, once per process, at the first start-up.

    Everything loaded by then (models, embeddings, LangChain) lives as long as the
    process: `gc.freeze()` moves it out of the collector's generations so the per-token
    garbage of streaming does not make every collection rescan it, and the young
    generation is collected less often (`GC_THRESHOLDS`). Measured: 63 -> 40 µs of
    server CPU per streamed token at 100 concurrent streams (bench/stream_bench.py). It
    is process-wide and never undone, so a second app in the same process (tests) does
    not repeat it.
    """
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def hand_threads_the_gil_sooner(settings: Settings) -> None:
    """The service's helper threads (the analysis pool's executor and queue threads, one
    thread per SQLite connection) each need the GIL only briefly, to pass a job or a
    result on. While the event loop is busy each of them waits up to the interpreter's
    switch interval (5 ms by default) per hand-off, and a job or a query makes several.
    Measured with 500 streams opened at once (timed inside the server, before the rate
    limiter's fix): the local analysis came back after p50 1.3 s at 5 ms, 50-70 ms at
    1 ms; streams/s at concurrency 100 moved within the runs' noise (README, Benchmarks).
    Process-wide, like `tune_gc_once`: the value of the last app started wins."""
    sys.setswitchinterval(settings.thread_switch_interval_ms / 1000)
