"""One async SQLAlchemy engine for SQLite and PostgreSQL, and the tables on it.

Every table that holds tenant data has `tenant_id` first in its primary key or index,
and every query in this package filters on it: isolation is in the schema, not only
in the code that happens to call it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    event,
    func,
    text,
)
from alembic import command
from alembic.config import Config
from filelock import AsyncFileLock
from sqlalchemy import Connection, inspect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.store.database_work import sqlite_file, sqlite_pragmas, use_database_work

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both backends: SQLite stores no zone and returns naive values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; use UTC-aware ones")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

service_processes = Table(
    "service_processes",
    metadata,
    Column("process_id", String(64), primary_key=True),
    Column("host", String(256), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False),
)

documents = Table(
    "kb_documents",
    metadata,
    Column("tenant_id", String(128), primary_key=True),
    Column("document_id", String(64), primary_key=True),
    Column("customer_id", String(128), nullable=True),
    Column("title", Text, nullable=False),  # sealed: longer than the 300 characters allowed
    Column("text", Text, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", UTCDateTime(), server_default=func.now(), nullable=False),
    Index("ix_kb_documents_document_id", "document_id"),  # cross-tenant checks of 404s (app.store.ownership)
)

document_chunks = Table(
    "kb_chunks",
    metadata,
    Column("tenant_id", String(128), primary_key=True),
    Column("document_id", String(64), primary_key=True),
    Column("chunk_index", Integer, primary_key=True),
    Column("customer_id", String(128), nullable=True),
    Column("text", Text, nullable=False),
    Column("embedding", LargeBinary, nullable=False),
    Index("ix_kb_chunks_tenant_customer", "tenant_id", "customer_id"),
)

# Turns of a rep's conversation about one customer. (The first schema's table,
# `conversation_messages`, keyed turns by session only; migration 0002 drops it.)
conversation_turns = Table(
    "conversation_turns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(128), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("session_id", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", UTCDateTime(), server_default=func.now(), nullable=False),
    Index("ix_conversation_turns_session", "tenant_id", "user_id", "customer_id", "session_id", "id"),
    Index("ix_conversation_turns_session_id", "session_id"),  # foreign-session checks (app.store.ownership)
)


knowledge_revisions = Table(
    # One row per tenant, bumped in the transaction of every document write: each
    # replica's in-memory retrieval index compares it (one indexed read) and rebuilds
    # when another replica changed the knowledge base.
    "kb_revisions",
    metadata,
    Column("tenant_id", String(128), primary_key=True),
    Column("revision", Integer, nullable=False),
)


customer_interactions = Table(
    "customer_interactions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(128), nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("sentiment_label", String(16), nullable=False),
    Column("sentiment_score", Float, nullable=False),
    Column("intent", String(32), nullable=False),
    Column("urgency", String(16), nullable=False),
    Column("automated", Boolean, nullable=False),
    Column("summary", Text, nullable=False),
    Index("ix_customer_interactions_customer", "tenant_id", "customer_id", "created_at"),
)


# Lead scoring (#13): every score served, the outcomes tenants record, and each
# tenant's own models. See app/store/lead_scores.py, lead_outcomes.py, scoring_models.py.
lead_scores = Table(
    "lead_scores",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(128), nullable=False),
    Column("lead_id", String(128), nullable=False),
    Column("score", Integer, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("features", JSON, nullable=False),  # the scoring input, for outcomes sent without one
    Column("explanation", JSON, nullable=False),  # reasoning and base_log_odds, as served
    Column("scored_at", UTCDateTime(), nullable=False),
    Index("ix_lead_scores_lead", "tenant_id", "lead_id", "id"),
    Index("ix_lead_scores_lead_id", "lead_id"),  # cross-tenant checks of 404s (app.store.ownership)
)

lead_outcomes = Table(
    # Append-only: a lead recorded twice (lost, then won when it came back) keeps both;
    # training and counts use each lead's latest.
    "lead_outcomes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(128), nullable=False),
    Column("lead_id", String(128), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("features", JSON, nullable=False),
    Column("features_from", String(16), nullable=False),  # "request" or "last_score"
    Column("recorded_by", String(256), nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    Index("ix_lead_outcomes_lead", "tenant_id", "lead_id", "id"),
)

scoring_models = Table(
    # A tenant's own versions; the newest is the active one. Replicas poll the newest
    # version number (one read of this primary key) and load a new one when it changes.
    "scoring_models",
    metadata,
    Column("tenant_id", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("prior", String(64), nullable=False),
    Column("params", JSON, nullable=False),  # LeadScoringModel.to_params(): JSON, never pickle
    Column("out_of_fold", JSON, nullable=False),  # lead_id -> probability from a fit that never saw it
    Column("training_size", Integer, nullable=False),  # outcomes it was trained on
    Column("outcomes_total", Integer, nullable=False),  # leads with an outcome then: the retrain cadence counts from it
    Column("metrics", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)


tenant_data_keys = Table(
    # Each tenant's data keys, wrapped by a master key (app.crypto): records name the
    # version that sealed them. Erasing a tenant deletes its rows (crypto-shredding).
    "tenant_data_keys",
    metadata,
    Column("tenant_id", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("master_key_id", String(32), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)


workflow_runs = Table(
    # Background runs (#16): a chain's run that no client holds. `process_id` is the
    # replica executing it (NULL while re-queued for any replica to claim); input and
    # output are sealed; `customer_id` (or a scoring run's lead id) finds it for erasure.
    "workflow_runs",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("tenant_id", String(128), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("chain", String(64), nullable=False),
    Column("customer_id", String(128), nullable=True),
    Column("status", String(16), nullable=False),
    Column("input", Text, nullable=False),
    Column("output", Text, nullable=True),
    Column("error", JSON, nullable=True),
    Column("retry", Boolean, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("process_id", String(64), nullable=True),
    Column("cancel_requested", Boolean, nullable=False),
    Column("idempotency_key", String(256), nullable=True),
    Column("request_digest", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("end_event_id", String(48), nullable=True),  # the `end` published: rejoins compare with it
    Index("ix_workflow_runs_tenant_created", "tenant_id", "created_at", "run_id"),
    Index("ix_workflow_runs_tenant_status", "tenant_id", "status"),
    Index("ix_workflow_runs_idempotency", "tenant_id", "user_id", "idempotency_key", unique=True),
    Index("ix_workflow_runs_status_process", "status", "process_id"),
)


def database_url(configured: str | None, sqlite_path: Path) -> str:
    """Maps the contract's `postgresql://…` to the async psycopg 3 driver."""
    if configured is None:
        return f"sqlite+aiosqlite:///{sqlite_path}"
    for prefix in ("postgresql://", "postgres://"):
        if configured.startswith(prefix):
            return "postgresql+psycopg://" + configured[len(prefix):]
    return configured


_P = ParamSpec("_P")
_T = TypeVar("_T")
_WRITES_IN_FLIGHT: set[asyncio.Future[Any]] = set()


def finishes_once_started(write: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """A write that runs to its commit even when its caller is cancelled (a client that
    leaves mid-stream); the caller still sees its cancellation.

    Why: a transaction cancelled inside the driver gets its connection invalidated, and
    with aiosqlite the half-closed connection can keep SQLite's write lock: every later
    write of every tenant then fails with "database is locked" (found by the OpenAPI
    fuzz, which abandons streams). The finished work is also worth keeping: the
    analysis was delivered, the turn was answered."""

    @functools.wraps(write)
    async def shielded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        running = asyncio.ensure_future(write(*args, **kwargs))
        _WRITES_IN_FLIGHT.add(running)  # a reference, or the loop may collect it mid-write
        running.add_done_callback(_WRITES_IN_FLIGHT.discard)
        return await asyncio.shield(running)

    return shielded


def _rollback_if_open(connection: Any) -> None:
    """SQLAlchemy rolls back every connection it closes or takes back to the pool, even
    one just committed or one that only read (the sqlite3 driver opens no transaction for
    a SELECT), and on aiosqlite each is a round trip through the connection's thread:
    one a read, one a write, one of the five before a run's audit start record was
    committed (and so its first event). The driver knows whether a transaction is open;
    when none is, sqlite3's own rollback would do nothing. When it cannot say (a closed
    driver connection), the adapter's rollback decides, as it did before."""
    try:  # the adapter's own handle: present on a connection detached from the pool too
        open_ = connection.dbapi_connection.driver_connection.in_transaction
    except (AttributeError, ValueError):
        open_ = True
    if open_:
        connection.rollback()


# How a PostgreSQL connection notices a host that stopped answering (powered off, cut
# off by the network) while it is open: the kernel gives up on data the server has not
# acknowledged after TCP_USER_TIMEOUT_MS, and probes a connection that waits in silence
# (for a slow answer, or idle in the pool) after KEEPALIVE_IDLE_S, every
# KEEPALIVE_INTERVAL_S. A live server's kernel acknowledges data and answers the probes
# even while a long query runs, so a slow statement is not cut (since Linux 5.11 a
# server that advertises a zero receive window for that long is given up too: one not
# reading a large batch of ours for 20 s). With the kernel's defaults a connection waited
# about 2 hours for the probes to start and about 15 minutes of retransmissions.
TCP_USER_TIMEOUT_MS = 20_000
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5


def _ping_within(timeout_s: float, unavailable: type[Exception]) -> Callable[[Any], bool]:
    """The pool's check of a PostgreSQL connection on checkout, bounded. A server whose
    processes hang (stopped, a frozen VM, a storage stall) still has a kernel that
    acknowledges the check, so neither keepalives nor `tcp_user_timeout` end the wait,
    and every request drawing a pooled connection waited for as long as the server
    hung. Cut short, psycopg cancels the check. A server that answers the cancel keeps
    the connection, and the caller gets `unavailable` (a retryable 503; the pool
    discards the connection). A hung one does not: psycopg gives up on it after up to
    10 s (with libpq 17 or later, as the binary package ships) and closes the
    connection, and the pool replaces it with a new one, which meets the connect timeout
    while the server still hangs. As SQLAlchemy's own check does, it runs in autocommit,
    so it opens no transaction."""
    async def ping(connection: Any) -> None:
        autocommit = connection.autocommit
        if not autocommit:
            await connection.set_autocommit(True)  # no round trip: the connection is idle
        try:
            async with asyncio.timeout(timeout_s):
                await connection.execute(";")  # what SQLAlchemy's own check sends
        finally:
            if not autocommit and not connection.closed:
                await connection.set_autocommit(False)

    def do_ping(dbapi_connection: Any) -> bool:
        try:
            dbapi_connection.run_async(ping)
        except TimeoutError:
            raise unavailable(f"the database did not answer the pool's check within {timeout_s:g} s") from None
        return True

    return do_ping


def create_engine(
    url: str, *, pool_size: int = 10, max_overflow: int = 20, pool_timeout_s: float = 5.0,
    lock_timeout_s: float = 0.0, connect_timeout_s: float = 5.0, inline_sqlite: bool = True,
) -> AsyncEngine:
    """A caller that finds every connection busy waits `pool_timeout_s`, then gets
    `sqlalchemy.exc.TimeoutError`, which the web layer answers with a retryable 503.
    On PostgreSQL a statement that waits for a lock longer than `lock_timeout_s` (0: no
    limit) is cancelled by the server, an `OperationalError`, answered the same way: one
    waiting on a migration's or a stuck session's lock held its request and its pooled
    connection for as long as the lock lasted. A statement slow for other reasons (a
    large tenant's knowledge read) is not cut. SQLite's lock waits are bounded by its
    busy timeout, and its readers never wait (WAL).

    A new PostgreSQL connection that is not ready within `connect_timeout_s` (whole
    seconds, at least 2, as psycopg and libpq read it) fails the same way: a server whose
    process hangs accepts the connection and never answers it, and one whose host is gone
    never accepts it; the request waited psycopg's default, 130 s. Any of these settings
    written in the URL's query wins over the engine's. A pooled connection that does not
    answer the pool's check on checkout in as long fails the same way (`_ping_within`).

    `inline_sqlite`: the stores' short SQLite work may run on the event loop's thread
    when SQLite answers at once (`app.store.database_work`)."""
    # A pooled PostgreSQL connection can die with its server or a proxy, so each checkout
    # pings it first; a SQLite file cannot go away under an open connection, and the ping
    # was a round trip through the connection's thread on every checkout.
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    connect_timeout = max(2, round(float(parsed.query.get("connect_timeout", connect_timeout_s))))  # type: ignore[arg-type]
    connect_args: dict[str, Any] = {} if sqlite else {
        key: value for key, value in {
            "connect_timeout": connect_timeout, "keepalives_idle": KEEPALIVE_IDLE_S,
            "keepalives_interval": KEEPALIVE_INTERVAL_S, "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        }.items() if key not in parsed.query
    }
    engine = create_async_engine(
        url, pool_pre_ping=not sqlite, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout_s,
        connect_args=connect_args,
    )
    if sqlite:
        engine.dialect.do_rollback = _rollback_if_open  # type: ignore[method-assign]

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # The busy timeout rides out the short write locks of concurrent requests
            # instead of failing them.
            sqlite_pragmas(dbapi_connection, busy_timeout_ms=5000)

        use_database_work(engine, inline=inline_sqlite)
        return engine

    engine.dialect.do_ping = _ping_within(  # type: ignore[method-assign]
        connect_timeout, engine.dialect.loaded_dbapi.OperationalError)
    if lock_timeout_s > 0:
        @event.listens_for(engine.sync_engine, "connect")
        def _lock_timeout(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # Once per pooled connection, committed: a SET in a transaction rolled back
            # (as the pool does on every return) would be undone.
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET lock_timeout = {max(1, round(lock_timeout_s * 1000))}")
            cursor.close()
            dbapi_connection.commit()

    return engine


MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 727_274  # a PostgreSQL advisory lock: replicas starting together migrate once


async def migrate(engine: AsyncEngine) -> None:
    """Brings the schema to the newest revision (and, for SQLite, creates the file's
    folder): run at start-up. Every schema change is an Alembic revision.

    Processes starting together on one database migrate it one after another: PostgreSQL
    replicas on an advisory lock; processes on one SQLite file (`uvicorn --workers`) on a
    lock file beside it, because SQLite runs DDL outside a transaction, so two of them both
    found no tables and the second failed to start ("table ai_runs already exists")."""
    if database := sqlite_file(engine.url):
        path = Path(database)
        path.parent.mkdir(parents=True, exist_ok=True)
        async with AsyncFileLock(path.with_name(path.name + ".migrate-lock")):
            await _migrate(engine)
        return
    await _migrate(engine)


async def _migrate(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Waits as long as another replica's migration takes, and a migration's own
            # lock waits are not cut by the engine's lock timeout either.
            await connection.execute(text("SET LOCAL lock_timeout = 0"))
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        await connection.run_sync(_upgrade)


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    tables = set(inspect(connection).get_table_names())
    if "ai_runs" in tables and "alembic_version" not in tables:
        command.stamp(config, "0001")  # a first-round database, made by create_all
    command.upgrade(config, "head")


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
