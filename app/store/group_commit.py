"""Many small inserts from concurrent requests, committed together (group commit).

Each caller awaits its own row's commit, so an answer that says "stored" is stored;
but one writer task commits whatever has queued up in a single transaction, so a
thousand concurrent scores (or a batch of a hundred) cost a handful of commits, not a
thousand (`app.store.batch_queue`). A caller that is cancelled while waiting does not
cancel the write: the writer task owns it. A batch the database refused is written again
row by row, and a failed row is retried (`app.store.retries`) before its waiter is told;
a batch the database could not take (away, locked, every connection busy) is retried
whole, as each of its rows would fail alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.batch_queue import BatchQueue
from app.store.database_work import database_work
from app.store.retries import retried

log = logging.getLogger(__name__)
MAX_BATCH = 1_000
# Failures of the database, not of a row: row by row, a batch of a thousand waiting on a
# lock was retried a thousand times, each waiting out the lock timeout again.
_UNAVAILABLE = (OperationalError, PoolTimeout)

_Row = TypeVar("_Row")


class GroupCommitWriter(Generic[_Row]):
    def __init__(
        self, engine: AsyncEngine, write: Callable[[Connection, list[_Row]], Any], *, name: str
    ) -> None:
        """`write` is a plain function of a connection (`app.store.database_work`)."""
        self._work = database_work(engine)
        self._write = write
        self._name = name
        self._batches: BatchQueue[_Row, None] = BatchQueue(self._commit_batch, name=name, max_batch=MAX_BATCH)

    async def submit(self, row: _Row) -> None:
        """Returns once `row` is committed; raises what the last retry raised."""
        await self._batches.submit(row)

    async def _commit_batch(self, rows: list[_Row]) -> list[Exception | None]:
        """One transaction for the batch; if it fails, each row on its own, so a row the
        database refuses (a NUL character on PostgreSQL) fails alone, not its neighbours."""
        if len(rows) > 1:
            try:
                await self._transaction(rows)
                return [None] * len(rows)
            except _UNAVAILABLE as error:
                log.warning("%s: a batch of %d rows failed (%r); retrying it whole", self._name, len(rows), error)
                return [await self._commit_with_retries(rows)] * len(rows)
            except Exception as error:  # noqa: BLE001 - retried row by row
                log.warning("%s: a batch of %d rows failed (%r); writing them one by one", self._name, len(rows), error)
        return [await self._commit_with_retries([row]) for row in rows]

    async def _transaction(self, rows: list[_Row]) -> None:
        await self._work.write(lambda connection: self._write(connection, rows), rows=len(rows))

    async def _commit_with_retries(self, rows: list[_Row]) -> Exception | None:
        try:
            await retried(lambda: self._transaction(rows), what=f"{self._name}: writing {len(rows)} rows")
        except Exception as error:  # noqa: BLE001 - reported to its waiter
            return error
        return None

    async def close(self) -> None:
        """Commits what is queued, then stops the writer."""
        await self._batches.close()
