"""Short SQLite work done on the event loop's own thread when SQLite can answer at once.

Why: aiosqlite runs every statement in a thread of its own, and each statement is a few
trips between that thread and the event loop (cursor, execute, close), each answered at
the loop's next turn. On a busy loop that is most of a write's time: at concurrency 10 a
run's audit start record took 8-12 ms to commit, and the first event waited for it
(README, "What a first event waits for at concurrency 10"). Done here, the same work
costs the statements' own CPU, a fraction of a millisecond for a small batch.

It never waits on the loop's thread. The connection's busy timeout is 0, and a write
takes SQLite's write lock first (`BEGIN IMMEDIATE`), so when another connection holds
the lock (a write through the async engine, another process on the same file) the work
is done through the async engine instead, whose thread waits for the lock; a read that
SQLite answers busy (rare in WAL mode) goes the same way. The work is a plain function of
a connection, run whole in one transaction either way. It must have no effect outside the
database: a busy answer halfway through rolls it back and it runs again.

Only small work runs here: SQLite's own time for a statement is the loop's time now,
where aiosqlite's thread spent it without holding the GIL. A batch of more than
`INLINE_MAX_ROWS` rows goes through the async engine: 1,000 finished runs with their
audit chain links held the loop for about 35 ms in one piece.

This connection does not checkpoint (`wal_autocheckpoint=0`): a checkpoint syncs the
database file to disk. After writes, at most once every `CHECKPOINT_EVERY_S`, a PASSIVE
checkpoint (which never blocks a writer or a reader) runs in a thread on a connection of
its own. One sync is left on the loop: the first write after a checkpoint that emptied
the log starts it over and syncs its new header (about 0.5 ms on this machine's disk,
once a second at most).

PostgreSQL's driver has no thread, and an in-memory SQLite database is private to its
connection: on either, every piece of work goes through the async engine.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy
from prometheus_client import Counter
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)
_T = TypeVar("_T")
CHECKPOINT_EVERY_S = 1.0
INLINE_MAX_ROWS = 100  # about 3.5 ms of the loop at most, for finished runs with their chain links
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

WORK = Counter(
    "ai_sqlite_work_total",
    "SQLite reads and writes by where they ran: on the event loop's thread (inline), or through the "
    "async engine because SQLite was busy (busy) or the work too large to hold the loop (large).",
    ["kind", "path"],
)


def _busy(error: OperationalError) -> bool:
    code = getattr(error.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def sqlite_pragmas(dbapi_connection: Any, *, busy_timeout_ms: int, checkpoints: bool = True) -> None:
    """Every SQLite connection of the service, the async engine's and the loop's alike: WAL
    lets readers run while a writer commits, and commits do not sync the file (a crash
    loses at most the last commits, never the database). Only the busy timeout and whether
    this connection checkpoints differ."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    if not checkpoints:
        cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _connection_engine(url: sqlalchemy.URL, *, write: bool) -> Engine:
    """One connection (the loop's thread is the only user, one piece of work at a time)."""
    engine = sqlalchemy.create_engine(
        url.set(drivername="sqlite"), poolclass=StaticPool, connect_args={"timeout": 0, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # the sqlite3 module opens no transaction of its own
        sqlite_pragmas(dbapi_connection, busy_timeout_ms=0, checkpoints=False)

    @event.listens_for(engine, "begin")
    def _begin(connection):  # type: ignore[no-untyped-def]
        # A write takes the lock before its first statement: busy now, or never. A read
        # is one snapshot for all its statements, and takes no lock.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def sqlite_file(url: sqlalchemy.URL) -> str | None:
    """The file a SQLite URL names; None for another backend or an in-memory database,
    which is private to its connection and has no file to share or lock."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") \
            or url.query.get("mode") == "memory":
        return None
    return url.database


class DatabaseWork:
    """`write` and `read` run `work(connection)` in one transaction and return its result;
    `rows` is how many rows it writes or reads, roughly (what decides whether it is short)."""

    def __init__(self, engine: AsyncEngine, *, inline: bool) -> None:
        url = engine.url
        self._engine = weakref.ref(engine)  # the registry below must not keep its key alive
        self._path = sqlite_file(url) if inline else None
        self._writer = _connection_engine(url, write=True) if self._path else None
        self._reader = _connection_engine(url, write=False) if self._path else None
        self._checkpoint: asyncio.Task[None] | None = None
        self._checkpointed_at = float("-inf")
        self._closed = False
        if self._path:
            # The loop's connections close with the engine's pool, and with the engine.
            writer, reader = self._writer, self._reader
            event.listen(engine.sync_engine, "engine_disposed", lambda _engine: _dispose_all(writer, reader))
            weakref.finalize(engine, _dispose_all, writer, reader)

    @property
    def inline(self) -> bool:
        """Whether short work may run on the loop's thread: then a batch of more than
        `INLINE_MAX_ROWS` rows goes through the driver's thread instead."""
        return self._path is not None

    @property
    def engine(self) -> AsyncEngine:
        engine = self._engine()
        if engine is None:  # pragma: no cover - the stores that use it hold the engine
            raise RuntimeError("the engine is gone")
        return engine

    async def write(self, work: Callable[[Connection], _T], *, rows: int) -> _T:
        done, result = _inline("write", self._writer, work, rows)
        if done:
            self._after_write()
            return result  # type: ignore[return-value]
        async with self.engine.begin() as connection:
            return await connection.run_sync(work)

    def write_now(self, work: Callable[[Connection], _T], *, rows: int) -> tuple[bool, _T | None]:
        """`(True, result)` when the work is done now, in the caller's turn of the loop;
        `(False, None)` when it cannot be (another writer holds the lock, no loop
        connection, too large): the caller sends it another way, which is what counts it."""
        done, result = _inline("write", self._writer, work, rows, count_refusal=False)
        if done:
            self._after_write()
        return done, result

    async def read(self, work: Callable[[Connection], _T], *, rows: int) -> _T:
        done, result = _inline("read", self._reader, work, rows)
        if done:
            return result  # type: ignore[return-value]
        async with self.engine.connect() as connection:
            return await connection.run_sync(work)

    def _after_write(self) -> None:
        now = time.monotonic()
        if self._checkpoint is None and not self._closed and now - self._checkpointed_at >= CHECKPOINT_EVERY_S:
            self._checkpointed_at = now
            self._checkpoint = asyncio.create_task(self._checkpoint_wal(), name="sqlite-checkpoint")

    async def _checkpoint_wal(self) -> None:
        assert self._path is not None
        try:
            await asyncio.to_thread(_checkpoint, self._path)
        except Exception:  # noqa: BLE001 - the next write schedules another; SQLite checkpoints on close too
            log.warning("a checkpoint of the SQLite write-ahead log failed", exc_info=True)
        finally:
            self._checkpoint = None

    async def close(self) -> None:
        """Lets a checkpoint in flight finish and starts no other: call it before the
        engine's `dispose()`, which closes the loop's connections with the pool's."""
        self._closed = True
        if self._checkpoint is not None:
            await asyncio.shield(self._checkpoint)


def _inline(kind: str, engine: Engine | None, work: Callable[[Connection], _T], rows: int, *,
            count_refusal: bool = True) -> tuple[bool, _T | None]:
    """(True, the result) when done on the loop's connection; (False, None) when the work
    is for the async engine: no such connection, too large, or SQLite busy."""
    if engine is None:
        return False, None
    if rows > INLINE_MAX_ROWS:
        if count_refusal:
            WORK.labels(kind, "large").inc()
        return False, None
    try:
        with engine.begin() as connection:
            result = work(connection)
    except OperationalError as error:
        if not _busy(error):
            raise
        if count_refusal:
            WORK.labels(kind, "busy").inc()
        return False, None
    WORK.labels(kind, "inline").inc()
    return True, result


def _checkpoint(path: str) -> None:
    """A connection of its own, in a thread: the pool's connections stay the requests'."""
    connection = sqlite3.connect(path, timeout=5)  # a wait here holds no one up
    try:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        connection.close()


def _dispose_all(*engines: Engine | None) -> None:
    for engine in engines:
        if engine is not None:
            engine.dispose()


_BY_ENGINE: weakref.WeakKeyDictionary[AsyncEngine, DatabaseWork] = weakref.WeakKeyDictionary()


def use_database_work(engine: AsyncEngine, *, inline: bool) -> DatabaseWork:
    """Chooses, once per engine (`app.store.database.create_engine`), whether its SQLite
    work may run on the loop's thread; every store on the engine then shares it."""
    work = _BY_ENGINE[engine] = DatabaseWork(engine, inline=inline)
    return work


def database_work(engine: AsyncEngine) -> DatabaseWork:
    """The engine's `DatabaseWork`: inline on a SQLite file unless its creator said not."""
    work = _BY_ENGINE.get(engine)
    if work is None:
        work = use_database_work(engine, inline=True)
    return work
