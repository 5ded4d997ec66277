"""Concurrent requests to the database served by one task, a batch at a time.

Under a burst, every stream asking the database on its own holds a pooled connection
for several turns of a busy event loop, and the pool runs dry: with 1,000 streams opened
at once, history reads waited past the pool's timeout and their streams failed
(`bench/stream_bench.py`). A queue's task takes whatever has queued up and serves it as
one batch (one statement, or one transaction), while the next requests queue behind it;
so a burst costs a handful of round trips, and one queue holds one connection at a time.
The audit trail (`app.store.audit`), the group-committed inserts
(`app.store.group_commit`) and the history reads (`app.store.interactions`) each have a
queue of their own.

A batch served without a turn of the loop (SQLite work done on the loop's own thread,
`app.store.database_work`) is followed by one before the next batch, so a backlog is
served in pieces between the other tasks' work. (A batch whose serving gave the loop a
turn *before* such work, to load a key or to pause for a retry, is not: then two
batches' work can run in one piece.)

A caller that is cancelled while waiting does not cancel the batch: the task owns it.
Every request is answered, whatever happens to the task: nothing waits forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
_In = TypeVar("_In")
_Out = TypeVar("_Out")


@dataclass
class _Pending(Generic[_In, _Out]):
    item: _In
    done: asyncio.Future[_Out]


class QueueClosed(RuntimeError):
    """The queue's task was stopped (its owner closed) before serving the request."""


class BatchQueue(Generic[_In, _Out]):
    """`serve` answers a batch with one result per item, in order; a result that is an
    exception is raised to that item's caller alone. If `serve` itself raises, every
    caller of that batch gets the same exception."""

    def __init__(
        self, serve: Callable[[list[_In]], Awaitable[Sequence[_Out | BaseException]]], *, name: str,
        max_batch: int,
    ) -> None:
        self._serve = serve
        self._name = name
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending[_In, _Out] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: _In) -> _Out:
        return await asyncio.shield(self.enqueue(item))

    @property
    def queued(self) -> int:
        """Requests waiting for the task (not counting the batch it is serving)."""
        return self._queue.qsize()

    def enqueue(self, item: _In) -> asyncio.Future[_Out]:
        """Queues `item` now, in the caller's order (a run's start record before anything
        the run records later), and returns its answer to await, or to leave."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._serve_forever(), name=self._name)
        pending: _Pending[_In, _Out] = _Pending(item, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return pending.done

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        batch: list[_Pending[_In, _Out]] = []
        try:
            while True:
                # After the stop marker, whatever was queued meanwhile is still served.
                if stopping and self._queue.empty():
                    return
                first = self._queue.get_nowait() if stopping else await self._queue.get()
                if first is None:
                    stopping = True
                    continue
                batch = [first]
                while not self._queue.empty() and len(batch) < self._max_batch:
                    item = self._queue.get_nowait()
                    if item is None:
                        stopping = True
                        continue
                    batch.append(item)
                turned = False

                def turn() -> None:
                    nonlocal turned
                    turned = True

                marker = loop.call_soon(turn)
                try:
                    results = await self._serve([p.item for p in batch])
                except Exception as error:  # noqa: BLE001 - every caller of the batch is told
                    results = [error] * len(batch)
                finally:
                    marker.cancel()
                self._settle(batch, results)
                batch = []
                if not turned:  # served on the loop's thread: a turn before the next batch
                    await asyncio.sleep(0)
        finally:  # cancelled or broken: no request is left waiting
            stopped = QueueClosed(f"{self._name} stopped")
            unserved = 0
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(stopped)
                    unserved += 1
            while not self._queue.empty():
                if (item := self._queue.get_nowait()) is not None and not item.done.done():
                    item.done.set_exception(stopped)
                    unserved += 1
            if unserved:
                log.error("%s stopped with %d requests unserved", self._name, unserved)

    def _settle(self, batch: list[_Pending[_In, _Out]], results: Sequence[_Out | BaseException]) -> None:
        if len(results) != len(batch):
            error = RuntimeError(f"{self._name}: {len(results)} results for {len(batch)} requests")
            results = [error] * len(batch)
        for pending, result in zip(batch, results, strict=True):
            if pending.done.done():
                continue
            if isinstance(result, BaseException):
                pending.done.set_exception(result)
            else:
                pending.done.set_result(result)

    async def close(self) -> None:
        """Serves what is queued, then stops the task."""
        if self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            await asyncio.shield(self._task)
