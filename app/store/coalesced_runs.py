"""Work per key that asks to run again rather than piling up.

A document write wants the tenant's retrieval index rebuilt, an outcome wants the
tenant's scoring model checked, every interaction analysis asks whether its tenant's
knowledge changed: each costs time or a database round trip, and a burst of requests
for one key must cost one run at a time, plus one more after it for whatever arrived
meanwhile (that run sees all of it), never one run per request. (A burst of 500 new
streams of one tenant once asked the database the same question 500 times, and some
streams failed waiting for a pooled connection.)

Whoever asks while a run is under way waits for the next one, which begins when that
one ends: its result never predates the request. Joining the run under way would be
cheaper, and could answer with a revision read before a write the caller had already
seen committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class CoalescedRuns(Generic[_K, _V]):
    def __init__(self, job: Callable[[_K], Awaitable[_V]], *, name: str) -> None:
        self._job = job
        self._name = name
        self._under_way: dict[_K, asyncio.Future[_V]] = {}
        self._next: dict[_K, asyncio.Future[_V]] = {}
        self._reported: set[asyncio.Future[_V]] = set()

    async def get(self, key: _K) -> _V:
        """The result of a run that began after this call. A caller that is cancelled
        leaves the run to the others."""
        return await asyncio.shield(self._due(key))

    def request(self, key: _K) -> None:
        """Asks for a run in the background and returns at once; a failure is logged
        (the next request runs it again)."""
        due = self._due(key)
        if due not in self._reported:
            self._reported.add(due)
            due.add_done_callback(lambda done: self._report(key, done))

    def _due(self, key: _K) -> asyncio.Future[_V]:
        if key not in self._under_way:
            return self._start(key)
        following = self._next.get(key)
        if following is None:
            following = self._next[key] = asyncio.get_running_loop().create_future()
            following.add_done_callback(_retrieve)
        return following

    def _start(self, key: _K) -> asyncio.Future[_V]:
        run = asyncio.ensure_future(self._job(key))
        self._under_way[key] = run
        run.add_done_callback(lambda done: self._finished(key, done))
        return run

    def _finished(self, key: _K, done: asyncio.Future[_V]) -> None:
        del self._under_way[key]
        _retrieve(done)
        following = self._next.pop(key, None)
        if following is None:
            return
        try:
            run = self._start(key)
        except Exception as error:  # noqa: BLE001 - a job that fails before it is a task fails its callers
            following.set_exception(error)
            return
        run.add_done_callback(lambda next_run: _settle(following, next_run))

    def _report(self, key: _K, done: asyncio.Future[_V]) -> None:
        self._reported.discard(done)
        if not done.cancelled() and (error := done.exception()) is not None:
            logger.error("%s failed for %s", self._name, key, exc_info=error)

    async def idle(self) -> None:
        """Waits for every run under way (and the runs they leave due) to finish."""
        while self._under_way or self._next:
            await asyncio.gather(*self._under_way.values(), *self._next.values(), return_exceptions=True)

    async def close(self) -> None:
        for following in self._next.values():
            following.cancel()
        self._next.clear()
        runs = list(self._under_way.values())
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


def _settle(waiting: asyncio.Future[_V], run: asyncio.Future[_V]) -> None:
    if waiting.done():
        return
    if run.cancelled():
        waiting.cancel()
    elif (error := run.exception()) is not None:
        waiting.set_exception(error)
    else:
        waiting.set_result(run.result())


def _retrieve(future: asyncio.Future[object]) -> None:
    """A run whose callers all left must not log "exception was never retrieved"."""
    if not future.cancelled():
        future.exception()
