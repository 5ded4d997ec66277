"""Many small inserts from concurrent requests, committed together (group commit).

Each caller awaits its own row's commit, so an answer that says "stored" is stored;
but one writer task commits whatever has queued up in a single transaction, so a
thousand concurrent scores (or a batch of a hundred) cost a handful of commits, not a
thousand. A caller that is cancelled while waiting does not cancel the write: the
writer task owns it. A failed batch is written again row by row, and a failed row is
retried (`RETRY_PAUSES_S`) before its waiter is told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)
RETRY_PAUSES_S = (0.1, 0.5, 1.0)
MAX_BATCH = 1_000

_Row = TypeVar("_Row")


@dataclass
class _Pending(Generic[_Row]):
    row: _Row
    done: asyncio.Future[None]


class GroupCommitWriter(Generic[_Row]):
    def __init__(
        self, engine: AsyncEngine, write: Callable[[AsyncConnection, list[_Row]], Awaitable[Any]], *, name: str
    ) -> None:
        self.engine = engine
        self._write = write
        self._name = name
        self._queue: asyncio.Queue[_Pending[_Row] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, row: _Row) -> None:
        """Returns once `row` is committed; raises what the last retry raised."""
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever(), name=self._name)
        pending = _Pending(row, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        await asyncio.shield(pending.done)

    async def _write_forever(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            for pending, error in zip(batch, await self._commit_batch([p.row for p in batch]), strict=True):
                if not pending.done.done():
                    if error is None:
                        pending.done.set_result(None)
                    else:
                        pending.done.set_exception(error)
            if stop:
                return

    async def _commit_batch(self, rows: list[_Row]) -> list[Exception | None]:
        """One transaction for the batch; if it fails, each row on its own, so a row the
        database refuses (a NUL character on PostgreSQL) fails alone, not its neighbours."""
        if len(rows) > 1:
            try:
                await self._transaction(rows)
                return [None] * len(rows)
            except Exception as error:  # noqa: BLE001 - retried row by row
                log.warning("%s: a batch of %d rows failed (%r); writing them one by one", self._name, len(rows), error)
        return [await self._commit_with_retries([row]) for row in rows]

    async def _transaction(self, rows: list[_Row]) -> None:
        async with self.engine.begin() as connection:
            await self._write(connection, rows)

    async def _commit_with_retries(self, rows: list[_Row]) -> Exception | None:
        for pause_s in (*RETRY_PAUSES_S, None):
            try:
                await self._transaction(rows)
                return None
            except Exception as error:  # noqa: BLE001 - reported to its waiter
                if pause_s is None:
                    log.exception("%s: writing %d rows failed for good", self._name, len(rows))
                    return error
                log.warning("%s: writing %d rows failed (%r); retrying in %.1f s", self._name, len(rows), error, pause_s)
                await asyncio.sleep(pause_s)
        return None

    async def close(self) -> None:
        """Commits what is queued, then stops the writer."""
        if self._writer is not None and not self._writer.done():
            self._queue.put_nowait(None)
            await self._writer
