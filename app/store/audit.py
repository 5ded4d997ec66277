"""The audit trail: one durable record per AI decision, and the security events.

Final records are chained per tenant in the same transaction (`app.store.audit_chain`):
a finished run when its record is completed, a security event when it is inserted.

A run's record is written *before* the run starts (status `running`) and completed
when it ends, so a process killed mid-run leaves a record that later reads as
`interrupted` instead of no record at all. Writes go through one writer task that
commits whatever has queued up (up to `MAX_BATCH` records, `INLINE_MAX_ROWS` on SQLite's
loop-thread path) in a single transaction (group commit, `app.store.batch_queue`): each
caller still waits for its own record to be durable, but a thousand concurrent runs cost
a handful of commits (ten on SQLite), not a thousand. A batch that fails is retried
whole (`app.store.retries`): its records are one transaction of the chain.

One exception, for the first event: a run's start record, when nothing is waiting for
the writer, is written at once in the caller's turn (`DatabaseWork.write_now`, SQLite
only). A run's first event leaves only once its start record is committed, and through
the writer that is two turns of the loop later, each a few milliseconds when other
streams are busy (README, "The first event at concurrency 10"). A record written alone
costs about 100 µs of the loop, one in a batch about 30, so at most
`START_NOW_PER_TURN` are written so in one turn of the loop: a burst still makes a batch.

On the loop's thread (SQLite), the writer's batches are at most `INLINE_MAX_ROWS`, so a
burst is written there too, a batch at a time with a turn of the loop between
(`app.store.batch_queue`). One batch of hundreds went through the driver's thread, whose
round trips waited for the busy loop's turns: in a burst of 500 new streams, the first
events waited for it (README, "A burst's start records on the loop's thread"). The price:
while another process holds SQLite's write lock past its busy timeout, a backlog fails a
batch of 100 at a time, each after its own retries (about 20 s), where one batch of up
to 1,000 failed once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from app.crypto.envelope import DecryptionFailed, TenantCipher
from app.crypto.keyring import Keyring
from app.store.audit_chain import ChainedTable, chain_groups
from app.store.batch_queue import BatchQueue
from app.store.database import UTCDateTime, metadata
from app.store.database_work import INLINE_MAX_ROWS, database_work
from app.store.retries import retried

log = logging.getLogger(__name__)
MAX_BATCH = 1_000
START_NOW_PER_TURN = 8
# A security event's detail may quote a customer (a flagged excerpt, a document title):
# it is sealed with the tenant's data key; kind, user and time stay readable.
DETAIL = "security_events.detail"

ai_runs = Table(
    "ai_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("tenant_id", String(128), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("chain", String(64), nullable=False),
    Column("endpoint", String(32), nullable=True),
    Column("status", String(16), nullable=False),  # running, ok, degraded, error, cancelled, interrupted
    Column("provider", String(64), nullable=True),
    Column("model", String(128), nullable=True),
    Column("tokens_in", Integer, nullable=False, default=0),
    Column("tokens_out", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("latency_ms", Float, nullable=True),
    Column("degraded", Boolean, nullable=False, default=False),
    Column("degraded_reason", String(64), nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("process_id", String(64), nullable=True),  # the service process running it
    Index("ix_ai_runs_tenant_started", "tenant_id", "started_at"),
    Index("ix_ai_runs_status_started", "status", "started_at"),
    Index("ix_ai_runs_process_status", "process_id", "status"),
)

security_events = Table(
    "security_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(128), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("run_id", String(64), nullable=True),
    Column("kind", String(64), nullable=False),
    Column("detail", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("route", String(256), nullable=True),  # where it happened (a route template)
    Column("client_address", String(64), nullable=True),  # who knocked, as the server saw it
    Index("ix_security_events_tenant", "tenant_id", "created_at"),
)

_OPTIONAL_EVENT_COLUMNS = {column.name: None for column in security_events.c if column.nullable}

CHAINED_RUNS = ChainedTable("run", ai_runs, "run_id", final=ai_runs.c.status.not_in(("running",)))
CHAINED_EVENTS = ChainedTable("security_event", security_events, "id")
CHAINED_TABLES = (CHAINED_RUNS, CHAINED_EVENTS)


def _opened_detail(cipher: TenantCipher, stored: Any) -> Any:
    """An erased tenant's records stay in the chain, but their details no longer open."""
    try:
        return cipher.open_json(DETAIL, stored)
    except DecryptionFailed:
        return {"unreadable": "sealed with a data key that was destroyed (the tenant's erasure)"}


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Write:
    kind: str  # run_started, run_finished, security_event
    values: dict[str, Any]


class AuditUnavailable(RuntimeError):
    """The start of a run could not be recorded: the run must not happen unaccounted.

    The web layer answers it with a retryable 503 (`app.api.errors`).
    """


def _unawaited(done: asyncio.Future[None]) -> None:
    """A record nobody waits for: a failed write was logged by `retried`, records the
    writer never reached by `BatchQueue`; reading the error here keeps asyncio from
    reporting it again as never retrieved."""
    if not done.cancelled():
        done.exception()


async def _committed(done: asyncio.Future[None]) -> None:
    try:
        await done
    except Exception as error:
        raise AuditUnavailable("the audit trail cannot be written") from error


def _write_records(
    connection: Connection, by_kind: dict[str, list[dict[str, Any]]], events: list[dict[str, Any]], now: datetime
) -> None:
    """A batch's records in one transaction (`app.store.database_work`: on SQLite usually
    on the loop's thread, the chain's links included)."""
    if rows := by_kind.get("run_started"):
        connection.execute(insert(ai_runs), rows)
    finished = by_kind.get("run_finished", [])
    # One executemany per column set (one database round trip), not one statement
    # per run: under a burst, a batch of finishes held every new run's start record
    # (and so its first event) behind hundreds of sequential updates.
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in finished:
        by_columns.setdefault(tuple(sorted(row)), []).append(row)
    for columns, rows_alike in by_columns.items():
        values: dict[str, Any] = {k: bindparam(k) for k in columns if k != "b_run_id"}
        connection.execute(update(ai_runs).where(ai_runs.c.run_id == bindparam("b_run_id")).values(values), rows_alike)
    event_ids: list[str] = []
    if events:
        inserted = connection.execute(
            insert(security_events).returning(security_events.c.id, sort_by_parameter_order=True), events
        )
        event_ids = [str(event_id) for event_id in inserted.scalars()]
    run_ids = [row["b_run_id"] for row in finished]
    chain_groups(connection, [(CHAINED_RUNS, run_ids), (CHAINED_EVENTS, event_ids)], now)


class AuditLog:
    def __init__(self, engine: AsyncEngine, keys: Keyring, *, interrupted_after_s: float, process_id: str) -> None:
        self.engine = engine
        self.keys = keys
        self.interrupted_after_s = interrupted_after_s
        self.process_id = process_id  # stamped on every run: see app.store.liveness
        self._work = database_work(engine)
        # On the loop's thread a burst is written in batches small enough to stay there,
        # each after a turn of the loop (`BatchQueue`), not as one batch through the
        # driver's thread, whose round trips wait for the busy loop's turns.
        max_batch = INLINE_MAX_ROWS if self._work.inline else MAX_BATCH
        self._writes: BatchQueue[_Write, None] = BatchQueue(self._commit, name="audit-writer", max_batch=max_batch)
        self._started_now_this_turn = 0
        self._turn_of: asyncio.AbstractEventLoop | None = None  # the loop whose current turn it counts

    async def _submit(self, kind: str, values: dict[str, Any], *, wait: bool) -> None:
        if wait:
            await self._writes.submit(_Write(kind, values))
        else:
            self._queue_unawaited(kind, values)

    def _queue_unawaited(self, kind: str, values: dict[str, Any]) -> None:
        self._writes.enqueue(_Write(kind, values)).add_done_callback(_unawaited)

    def begin_run(self, **values: Any) -> asyncio.Future[None]:
        """Queues the run's start record now, so whatever the run records later (its end,
        even if it is cancelled at once) is written after it, and returns the record's
        commit: awaiting it raises `AuditUnavailable` when it cannot be written."""
        values = {**values, "status": "running", "started_at": utcnow(), "process_id": self.process_id}
        if self._start_now(values):
            committed = asyncio.get_running_loop().create_future()
            committed.set_result(None)
            return committed
        return asyncio.ensure_future(_committed(self._writes.enqueue(_Write("run_started", values))))

    def _start_now(self, values: dict[str, Any]) -> bool:
        """Writes a start record in the caller's turn if that is cheap and changes no
        order (see the module's docstring); False sends it through the writer."""
        loop = asyncio.get_running_loop()  # before writing: no loop, no run to record
        if self._turn_of is not loop:  # the turn's reset ran, or this is another loop
            self._started_now_this_turn = 0
        if self._started_now_this_turn >= START_NOW_PER_TURN or self._writes.queued:
            return False
        try:
            done, _ = self._work.write_now(lambda connection: connection.execute(insert(ai_runs), [values]), rows=1)
        except Exception:  # noqa: BLE001 - the writer retries it, and says so if it cannot
            log.debug("a start record could not be written at once", exc_info=True)
            return False
        if done:
            if self._turn_of is not loop:
                self._turn_of = loop
                loop.call_soon(self._next_turn)
            self._started_now_this_turn += 1
        return done

    def _next_turn(self) -> None:
        self._turn_of = None

    async def run_finished(self, run_id: str, *, wait: bool = True, **values: Any) -> None:
        await self._submit("run_finished", {**values, "b_run_id": run_id, "finished_at": utcnow()}, wait=wait)

    async def security_event(self, *, wait: bool = True, **values: Any) -> None:
        await self._submit("security_event", {**values, "created_at": utcnow()}, wait=wait)

    def enqueue_security_event(self, **values: Any) -> None:
        """Queues an event without waiting for it (the security log's path: recording
        must never fail or slow the request it is about). Needs a running loop."""
        self._queue_unawaited("security_event", {**values, "created_at": utcnow()})

    async def _commit(self, batch: list[_Write]) -> list[None]:
        await retried(lambda: self._write(batch), what=f"audit write of {len(batch)} records")
        return [None] * len(batch)

    async def _write(self, batch: list[_Write]) -> None:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for item in batch:
            by_kind.setdefault(item.kind, []).append(item.values)
        # Sealed before the transaction opens: a tenant's first data key is made on a
        # connection of its own, which on SQLite waits for the write lock this transaction
        # holds. Inside it, a new tenant's first security event failed the whole batch at
        # the busy timeout, again at every retry, and the batch's records were lost.
        events = await self._sealed(by_kind.get("security_event", []))
        now = utcnow()
        await self._work.write(lambda connection: _write_records(connection, by_kind, events, now), rows=len(batch))

    async def _sealed(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Details sealed in the writer, so a key that cannot be read yet (the database
        blinked) is retried with the batch instead of failing the caller. Every row names
        every optional column: the batch is one statement, whose parameters are the first
        row's, and an event without a route next to one with it failed the whole batch."""
        sealed = []
        for event in events:
            cipher = await self.keys.cipher(event["tenant_id"])
            sealed.append({**_OPTIONAL_EVENT_COLUMNS, **event,
                           "detail": cipher.seal_json(DETAIL, event.get("detail") or {})})
        return sealed

    def _status(self) -> Any:
        """Runs of processes without ids (before liveness existed) that are still
        `running` long after any run could last read as interrupted; the others are
        marked by `app.store.liveness`."""
        cutoff = utcnow() - timedelta(seconds=self.interrupted_after_s)
        stale = and_(ai_runs.c.status == "running", ai_runs.c.process_id.is_(None), ai_runs.c.started_at < cutoff)
        return case((stale, "interrupted"), else_=ai_runs.c.status)

    async def usage(self, tenant_id: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
        status = self._status().label("status")
        inner = (
            select(ai_runs, status.label("effective_status"))
            .where(and_(ai_runs.c.tenant_id == tenant_id, ai_runs.c.started_at >= since,
                        ai_runs.c.started_at < until))
            .subquery()
        )
        statement = (
            select(
                inner.c.chain, inner.c.model, inner.c.provider, inner.c.effective_status,
                func.count().label("runs"),
                func.sum(inner.c.tokens_in).label("tokens_in"),
                func.sum(inner.c.tokens_out).label("tokens_out"),
                func.sum(inner.c.cost_usd).label("cost_usd"),
                func.sum(case((inner.c.degraded, 1), else_=0)).label("degraded"),
                func.avg(inner.c.latency_ms).label("latency_ms_avg"),
            )
            .group_by(inner.c.chain, inner.c.model, inner.c.provider, inner.c.effective_status)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [dict(row) for row in rows]

    async def recent_runs(self, tenant_id: str, limit: int) -> list[dict[str, Any]]:
        statement = (
            select(*[c for c in ai_runs.c if c.name != "status"], self._status().label("status"))
            .where(ai_runs.c.tenant_id == tenant_id)
            .order_by(ai_runs.c.started_at.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return [dict(row) for row in (await connection.execute(statement)).mappings().all()]

    async def recent_security_events(
        self, tenant_id: str | None, limit: int, *, kind: str | None = None, every_tenant: bool = False
    ) -> list[dict[str, Any]]:
        """Newest first; `every_tenant=True` (with no tenant) reads every tenant's and the
        tenant-less ones: an operator's view, asked for explicitly, never by a missing id."""
        if tenant_id is None and not every_tenant:
            raise ValueError("a tenant, or every_tenant=True")
        statement = select(security_events).order_by(security_events.c.id.desc()).limit(limit)
        if tenant_id is not None:
            statement = statement.where(security_events.c.tenant_id == tenant_id)
        if kind is not None:
            statement = statement.where(security_events.c.kind == kind)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        ciphers = {tenant: await self.keys.cipher(tenant) for tenant in {row["tenant_id"] for row in rows}}
        return [{**row, "detail": _opened_detail(ciphers[row["tenant_id"]], row["detail"])} for row in rows]

    async def close(self) -> None:
        """Commits every record queued, the batch being written included, then stops."""
        await self._writes.close()
