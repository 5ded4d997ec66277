"""CPU-bound work of the chains, off the event loop and shared fairly between tenants.

The embedded analysis is pure CPU (a 20 KB message took half a second of VADER on the
event loop, and 40 of them stalled every tenant for 16 s). A short message is the
exception: `run_sized` reads it in place, where it costs less than a round trip here
(see there). Jobs run in worker
*processes*, one per core: threads were tried first and measured worse, because pure
Python analysis in two threads starved the event loop of the GIL (victim p50 1.2 s
under the bench/cpu_fairness_bench attack, 0.1 s with processes). Workers are spawned
(not forked from a threaded server), started at start-up, load their models once, and
die with the service even when it is killed (PR_SET_PDEATHSIG).

Which job runs next is decided here, not first come first served: each tenant's CPU
time is accounted (decaying with a half-life), and a free worker takes the oldest job
of the tenant that used least. A tenant flooding the pool waits behind its own share;
another tenant's job waits for at most the jobs already handed to the workers.

Up to `jobs_per_worker` jobs per worker are handed to the executor at once (one
running, the others queued there). With one, a worker sat idle from the end of each job
until the event loop had taken its result and chosen the next: under a burst of new
streams the loop is busy, each such turn took tens of milliseconds against a job of a
few, and with 500 streams opened at once the local analysis (their first event) came
back after p50 5.9 s, p95 13.6 s (timed inside the server). A job whose caller leaves
after it was handed out is withdrawn through a flag in shared memory: the worker skips
it unless it has begun (a job under way runs to its end, as before).
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import math
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from app.core.config import Settings

_T = TypeVar("_T")
USAGE_HALF_LIFE_S = 10.0
PR_SET_PDEATHSIG = 1
# Far more than jobs are ever handed out at once: a slot is reused long after its job ended.
WITHDRAWAL_SLOTS = 65_536
_withdrawn: Any = None  # in a worker: the shared flags of jobs whose callers left


def _start_worker(model_cache_dir: Path | None, withdrawn: Any) -> None:
    """In each worker: die with the service, so a killed service leaves no workers
    behind; then load the models once (the parent trained and cached them)."""
    global _withdrawn
    _withdrawn = withdrawn
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    import chains.interactions  # noqa: F401 - the functions jobs run
    from chains.embeddings import embed_one
    from chains.local.classifier import classifier, configure
    from chains.safety import warm_up

    embed_one("warm up")
    warm_up()
    configure(model_cache_dir)
    classifier()


def _ready() -> int:
    return os.getpid()


class _SharedExecutor:
    """One process pool per process, however many apps it runs (tests start many),
    shut down when the last app using it closes."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self._users = 0
        self._withdrawn: Any = None
        self._slots = itertools.count()
        self._settings: tuple[int, Path | None] = (1, None)

    def acquire(self, workers: int, model_cache_dir: Path | None) -> Executor:
        if self._executor is None:
            self._settings = (workers, model_cache_dir)
            self._start()
        self._users += 1
        assert self._executor is not None
        return self._executor

    def _start(self) -> None:
        workers, model_cache_dir = self._settings
        context = multiprocessing.get_context("spawn")
        if self._withdrawn is None:
            self._withdrawn = context.RawArray(ctypes.c_bool, WITHDRAWAL_SLOTS)
        self._executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_start_worker,
            initargs=(model_cache_dir, self._withdrawn),
        )

    def replace_broken(self, broken: Executor) -> Executor:
        """A worker that dies (killed, out of memory) breaks the whole pool for good: its
        jobs fail, and every later submit would raise. The pool is started afresh once
        per breakage, however many users notice it."""
        if self._executor is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self._start()
        assert self._executor is not None
        return self._executor

    def claim_slot(self) -> int:
        slot = next(self._slots) % WITHDRAWAL_SLOTS
        self._withdrawn[slot] = False
        return slot

    def withdraw(self, slot: int) -> None:
        self._withdrawn[slot] = True

    def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


_SHARED = _SharedExecutor()


def _measured(slot: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float]:
    """Runs in a worker: the result and the CPU seconds it cost (nothing for a job
    withdrawn while it waited)."""
    if _withdrawn[slot]:
        return None, 0.0
    started = time.process_time()
    return fn(*args), time.process_time() - started


@dataclass
class _Job:
    tenant_id: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    sequence: int
    slot: int | None = None  # once handed to the executor


@dataclass
class _Tenant:
    usage_s: float = 0.0  # decayed CPU seconds
    updated: float = field(default_factory=time.monotonic)
    waiting: deque[_Job] = field(default_factory=deque)

    def decayed(self, now: float) -> float:
        return self.usage_s * math.pow(0.5, (now - self.updated) / USAGE_HALF_LIFE_S)


class FairCpuPool:
    def __init__(
        self, workers: int | None = None, *, jobs_per_worker: int, model_cache_dir: Path | None = None,
        inline_max_size: int = 0,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.in_flight_limit = self.workers * jobs_per_worker
        self.model_cache_dir = model_cache_dir
        self.inline_max_size = inline_max_size
        self._executor: Executor | None = None
        self._tenants: dict[str, _Tenant] = {}
        self._running = 0
        self._sequence = itertools.count()

    @classmethod
    def configured(cls, settings: Settings, workers: int | None = None) -> FairCpuPool:
        """The pool as the service runs it (`workers`: the setting's unless given): the
        evaluations measure the chains with the same one."""
        return cls(settings.cpu_workers if workers is None else workers, jobs_per_worker=settings.cpu_jobs_per_worker,
                   model_cache_dir=settings.model_cache_path, inline_max_size=settings.cpu_inline_max_chars)

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = _SHARED.acquire(self.workers, self.model_cache_dir)
        return self._executor

    async def start(self) -> None:
        """Starts every worker now (forking and loading models takes about a second),
        so the first requests do not wait for it."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.executor, _ready) for _ in range(self.workers)))

    async def run(self, tenant_id: str, fn: Callable[..., _T], /, *args: Any) -> _T:
        """`fn(*args)` on a worker, after the jobs of tenants that used less CPU."""
        loop = asyncio.get_running_loop()
        job = _Job(tenant_id, fn, args, loop.create_future(), next(self._sequence))
        self._tenants.setdefault(tenant_id, _Tenant()).waiting.append(job)
        self._dispatch()
        try:
            return await job.future
        except asyncio.CancelledError:
            tenant = self._tenants.get(tenant_id)
            if tenant is not None and job in tenant.waiting:
                tenant.waiting.remove(job)  # never handed out: costs nothing
            elif job.slot is not None:
                _SHARED.withdraw(job.slot)  # a worker skips it unless it has begun
            raise

    async def run_sized(self, tenant_id: str, size: int, fn: Callable[..., _T], /, *args: Any) -> _T:
        """`fn(*args)` here, on the event loop, when `size` is at most `inline_max_size`;
        otherwise as `run`.

        A round trip through the pool costs the event loop about 0.3-0.4 ms of CPU
        (pickling, the executor's thread, the result's wake-up), as much as analysing a
        short message outright (0.47 ms at 55 characters, 1.2 ms at 500; bench, 2026-12-03).
        And under a burst each round trip waits its turn in a queue the busy loop drains
        slowly: with 500 streams opened at once, the first events came after p95 2.34-2.37 s
        through the pool and 0.78-0.82 s with the analysis in place, at the same streams/s.
        Long texts still go to the workers, where a tenant's heavy messages wait behind its
        own share and never hold the loop. Work done in place is not accounted to the
        tenant's share: each piece costs less than the pool's own overhead would."""
        if size <= self.inline_max_size:
            return fn(*args)
        return await self.run(tenant_id, fn, *args)

    def _next_job(self) -> _Job | None:
        now = time.monotonic()
        candidates = []
        for tenant_id, tenant in list(self._tenants.items()):
            if tenant.waiting:
                candidates.append((tenant.decayed(now), tenant.waiting[0].sequence, tenant))
            elif tenant.decayed(now) < 1e-3:
                del self._tenants[tenant_id]  # idle long enough to be forgotten: memory stays bounded
        if not candidates:
            return None
        _, _, tenant = min(candidates, key=lambda candidate: candidate[:2])
        return tenant.waiting.popleft()

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self.in_flight_limit:
            job = self._next_job()
            if job is None:
                return
            self._running += 1
            try:
                handed = self._hand_out(loop, job)
            except Exception as error:  # noqa: BLE001 - no pool to run it: the job fails, never hangs
                self._running -= 1
                if not job.future.done():
                    job.future.set_exception(error)
                continue
            handed.add_done_callback(lambda done, job=job: self._finished(job, done))

    def _hand_out(self, loop: asyncio.AbstractEventLoop, job: _Job) -> asyncio.Future[tuple[Any, float]]:
        executor = self.executor  # first: the withdrawal flags are made with the pool
        job.slot = _SHARED.claim_slot()
        try:
            return loop.run_in_executor(executor, _measured, job.slot, job.fn, job.args)
        except BrokenProcessPool:
            self._executor = _SHARED.replace_broken(executor)
            return loop.run_in_executor(self._executor, _measured, job.slot, job.fn, job.args)

    def _finished(self, job: _Job, done: asyncio.Future[tuple[Any, float]]) -> None:
        self._running -= 1
        tenant = self._tenants.setdefault(job.tenant_id, _Tenant())
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        if error is None:
            result, cpu_s = done.result()
            now = time.monotonic()
            tenant.usage_s, tenant.updated = tenant.decayed(now) + cpu_s, now
            if not job.future.done():
                job.future.set_result(result)
        elif not job.future.done():
            job.future.set_exception(error)
        self._dispatch()

    def close(self) -> None:
        """Drops queued jobs and lets go of the shared workers (the last user stops them)."""
        for tenant in self._tenants.values():
            for job in tenant.waiting:
                job.future.cancel()
        self._tenants.clear()
        if self._executor is not None:
            self._executor = None
            _SHARED.release()
