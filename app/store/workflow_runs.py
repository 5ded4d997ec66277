"""Background runs' records (#16): what was asked, where it runs, how it ended.

The row is the run's truth on every replica: status moves only forward
(`queued` → `running` → a final status) by compare-and-set updates that name the
status they expect and, once a replica took the run, that replica's process id. So a
cancel, a finishing run and a replica sweeping up after a dead one can race and exactly
one of them wins: only the winner announces the change.

Input and output quote the customer: both are sealed with the tenant's data key.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, insert, literal, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.crypto.keyring import Keyring
from app.store.audit import utcnow
from app.store.database import finishes_once_started, workflow_runs as runs

INPUT, OUTPUT = "workflow_runs.input", "workflow_runs.output"
ACTIVE = ("queued", "running")
FINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
LIST_COLUMNS = [c for c in runs.c if c.name not in ("input", "output")]
CANCELLED = {"code": "cancelled", "message": "cancelled by a request", "retryable": False}


@dataclass(frozen=True, slots=True)
class WorkflowRun:
    run_id: str
    tenant_id: str
    user_id: str
    chain: str
    customer_id: str | None
    status: str
    retry: bool
    attempt: int
    process_id: str | None
    cancel_requested: bool
    idempotency_key: str | None
    request_digest: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    end_event_id: str | None = None
    error: dict[str, Any] | None = None
    input: Any = None  # None in listings
    output: Any = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def public(self, *, full: bool = True) -> dict[str, Any]:
        """The run as clients read it (`GET /api/v1/ai/workflows/{id}`)."""
        end = self.finished_at
        view: dict[str, Any] = {
            "id": self.run_id, "chain": self.chain, "status": self.status, "customer_id": self.customer_id,
            "user_id": self.user_id, "retry": self.retry, "attempt": self.attempt,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": end.isoformat() if end else None,
            "queued_ms": _ms(self.created_at, self.started_at or end),
            "run_ms": _ms(self.started_at, end),
            "error": self.error,
        }
        if full:
            view["input"], view["output"] = self.input, self.output
        return view


def _active_of(tenant_id: str, customer_id: str | None) -> Any:
    """The tenant's queued and running runs, or one customer's."""
    where = and_(runs.c.tenant_id == tenant_id, runs.c.status.in_(ACTIVE))
    return where if customer_id is None else and_(where, runs.c.customer_id == customer_id)


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds() * 1000, 3) if start and end else None


class TooManyActiveRuns(Exception):
    def __init__(self, active: int) -> None:
        super().__init__(f"{active} runs queued or running")
        self.active = active


class IdempotencyKeyReused(Exception):
    """The key names a run started with a different request."""


class WorkflowRuns:
    def __init__(self, engine: AsyncEngine, keys: Keyring) -> None:
        self.engine = engine
        self.keys = keys
        # Per tenant: a key's lookup and the insert must not interleave within a
        # process; PostgreSQL replicas serialise on an advisory lock as well.
        self._create_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def create(
        self, *, run_id: str, tenant_id: str, user_id: str, chain: str, customer_id: str | None, input: Any,
        retry: bool, idempotency_key: str | None, request_digest: str, process_id: str, max_active: int,
    ) -> tuple[WorkflowRun, bool]:
        """The new run (True), or the one its idempotency key already names (False)."""
        sealed = (await self.keys.cipher(tenant_id)).seal_json(INPUT, input)
        lock = self._create_locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            try:
                async with self.engine.begin() as connection:
                    if connection.dialect.name == "postgresql":
                        await connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                                                 {"key": f"workflows:{tenant_id}"})
                    if idempotency_key is not None:
                        found = await self._by_key(connection, tenant_id, user_id, idempotency_key)
                        if found is not None:
                            return await self._replayed(found, request_digest), False
                    values = {
                        "run_id": run_id, "tenant_id": tenant_id, "user_id": user_id, "chain": chain,
                        "customer_id": customer_id, "status": "queued", "input": sealed, "retry": retry, "attempt": 1,
                        "process_id": process_id, "cancel_requested": False, "idempotency_key": idempotency_key,
                        "request_digest": request_digest, "created_at": utcnow(),
                    }
                    active = select(func.count()).select_from(runs).where(
                        runs.c.tenant_id == tenant_id, runs.c.status.in_(ACTIVE)).scalar_subquery()
                    # One statement counts and inserts: atomic on SQLite even across processes.
                    inserted = await connection.execute(insert(runs).from_select(
                        list(values), select(*(literal(v, runs.c[k].type) for k, v in values.items())).where(
                            active < max_active)).returning(runs.c.run_id))
                    if inserted.first() is None:  # (rowcount is -1 for INSERT … SELECT on psycopg)
                        raise TooManyActiveRuns((await connection.execute(select(active))).scalar_one())
            except IntegrityError:
                # Another process inserted the same key first (SQLite shared by workers).
                assert idempotency_key is not None
                async with self.engine.connect() as connection:
                    found = await self._by_key(connection, tenant_id, user_id, idempotency_key)
                if found is None:
                    raise
                return await self._replayed(found, request_digest), False
        created = await self.get(tenant_id, run_id)
        assert created is not None
        return created, True

    async def _by_key(self, connection: AsyncConnection, tenant_id: str, user_id: str, key: str) -> dict[str, Any] | None:
        """Keys are each user's own: a retry comes from the client that sent the first try."""
        row = (await connection.execute(
            select(runs).where(runs.c.tenant_id == tenant_id, runs.c.user_id == user_id, runs.c.idempotency_key == key)
        )).mappings().first()
        return dict(row) if row is not None else None

    async def _replayed(self, row: dict[str, Any], request_digest: str) -> WorkflowRun:
        if row["request_digest"] != request_digest:
            raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
        return await self._opened(row)

    async def _opened(self, row: Any) -> WorkflowRun:
        values = dict(row)
        if "input" in values:
            cipher = await self.keys.cipher(values["tenant_id"])
            values["input"] = cipher.open_json(INPUT, values["input"])
            if values.get("output") is not None:
                values["output"] = cipher.open_json(OUTPUT, values["output"])
        return WorkflowRun(**values)

    async def get(self, tenant_id: str, run_id: str) -> WorkflowRun | None:
        return await self._first(select(runs).where(runs.c.tenant_id == tenant_id, runs.c.run_id == run_id))

    async def get_any(self, run_id: str) -> WorkflowRun | None:
        """A run by id alone: for the replica that executes it, never for a client."""
        return await self._first(select(runs).where(runs.c.run_id == run_id))

    @finishes_once_started  # a watcher leaving mid-read must not tear its connection down
    async def _first(self, statement: Select[Any]) -> WorkflowRun | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement)).mappings().first()
        return await self._opened(row) if row is not None else None

    async def page(self, tenant_id: str, *, chains: list[str], status: str | None, limit: int,
                   before: tuple[datetime, str] | None) -> list[WorkflowRun]:
        """Newest first; `before` is the (created_at, id) of the last run of the previous page."""
        statement = select(*LIST_COLUMNS).where(runs.c.tenant_id == tenant_id, runs.c.chain.in_(chains))
        if status is not None:
            statement = statement.where(runs.c.status == status)
        if before is not None:
            at, run_id = before
            statement = statement.where(or_(runs.c.created_at < at, and_(runs.c.created_at == at, runs.c.run_id < run_id)))
        statement = statement.order_by(runs.c.created_at.desc(), runs.c.run_id.desc()).limit(limit)
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [WorkflowRun(**dict(row)) for row in rows]

    async def claim(self, run_id: str, process_id: str) -> bool:
        """queued → running on this replica, unless it was cancelled meanwhile."""
        return await self._update(
            and_(runs.c.run_id == run_id, runs.c.status == "queued", runs.c.process_id == process_id,
                 runs.c.cancel_requested.is_(False)),
            status="running", started_at=utcnow(),
        )

    async def finish(self, run: WorkflowRun, process_id: str, status: str, *, output: Any = None,
                     error: dict[str, Any] | None = None) -> bool:
        """Final, if this replica still holds the run (a sweep may have taken it)."""
        sealed = (await self.keys.cipher(run.tenant_id)).seal_json(OUTPUT, output) if output is not None else None
        return await self._update(
            and_(runs.c.run_id == run.run_id, runs.c.status.in_(ACTIVE), runs.c.process_id == process_id),
            status=status, output=sealed, error=error, finished_at=utcnow(),
        )

    async def cancel_queued(self, tenant_id: str, run_id: str) -> bool:
        """A run no replica started yet is cancelled here and now."""
        return await self._update(
            and_(runs.c.tenant_id == tenant_id, runs.c.run_id == run_id, runs.c.status == "queued"),
            status="cancelled", cancel_requested=True, finished_at=utcnow(), error=CANCELLED,
        )

    async def request_cancel(self, tenant_id: str, run_id: str) -> bool:
        """A running run is cancelled by the replica that runs it (`cancel_requests`)."""
        return await self._update(
            and_(runs.c.tenant_id == tenant_id, runs.c.run_id == run_id, runs.c.status.in_(ACTIVE)),
            cancel_requested=True,
        )

    async def cancel_requests(self, process_id: str) -> list[str]:
        statement = select(runs.c.run_id).where(
            runs.c.status.in_(ACTIVE), runs.c.process_id == process_id, runs.c.cancel_requested.is_(True))
        async with self.engine.connect() as connection:
            return list((await connection.execute(statement)).scalars())

    async def abandoned(self, alive: Select[Any] | None, *, taker: str, process_id: str | None = None
                        ) -> list[WorkflowRun]:
        """Active runs held by a process that is not in `alive` (or by `process_id`, a
        replica stopping): a queued one moves to `taker`; a running one is re-queued once,
        held by `taker`, if it asked for a retry, else `interrupted` (`cancelled` if a
        cancel was asked). Returns the runs as they now are, each changed by this
        call only. Held, not free for any replica: `taker` announces the new attempt
        before anyone can start it, so its watchers see `queued` before `running`."""
        held = runs.c.process_id == process_id if process_id is not None else and_(
            # Never its own: a replica whose heartbeat is late is alive to itself.
            runs.c.process_id.is_not(None), runs.c.process_id != taker, runs.c.process_id.not_in(alive))
        async with self.engine.connect() as connection:
            rows = (await connection.execute(
                select(runs.c.run_id, runs.c.process_id, runs.c.status, runs.c.retry, runs.c.attempt,
                       runs.c.cancel_requested).where(runs.c.status.in_(ACTIVE), held)
            )).all()
        changed: list[WorkflowRun] = []
        for run_id, holder, status, retry, attempt, cancel_requested in rows:
            expected = and_(runs.c.run_id == run_id, runs.c.process_id == holder, runs.c.status == status)
            if cancel_requested:
                moved = await self._update(expected, status="cancelled", finished_at=utcnow(), error=CANCELLED)
            elif status == "queued":  # never started: it simply moves
                moved = await self._update(expected, process_id=taker)
            elif retry and attempt < 2:
                moved = await self._update(expected, status="queued", process_id=taker, attempt=attempt + 1,
                                           started_at=None)
            else:
                moved = await self._update(expected, status="interrupted", finished_at=utcnow(), error={
                    "code": "interrupted", "retryable": True,
                    "message": "the replica running it stopped before it finished"})
            if moved and (run := await self.get_any(run_id)) is not None:
                changed.append(run)
        return changed

    async def release(self, run_id: str, process_id: str) -> bool:
        """A queued run this replica will not start (it is stopping): free for any other."""
        return await self._update(and_(runs.c.run_id == run_id, runs.c.status == "queued",
                                       runs.c.process_id == process_id), process_id=None)

    async def claim_released(self, process_id: str, limit: int) -> list[WorkflowRun]:
        """Released runs taken by this replica, oldest first."""
        if limit <= 0:
            return []
        async with self.engine.connect() as connection:
            candidates = list((await connection.execute(
                select(runs.c.run_id).where(runs.c.status == "queued", runs.c.process_id.is_(None))
                .order_by(runs.c.created_at).limit(limit)
            )).scalars())
        claimed: list[WorkflowRun] = []
        for run_id in candidates:
            if await self._update(and_(runs.c.run_id == run_id, runs.c.status == "queued",
                                       runs.c.process_id.is_(None)), process_id=process_id):
                if (run := await self.get_any(run_id)) is not None:
                    claimed.append(run)
        return claimed

    async def held(self, process_id: str) -> set[str]:
        """The active runs this replica holds: a local task whose run is not among them
        lost it (erased, or taken over after a late heartbeat) and must stop; one of
        them without a local task was orphaned (a failure between insert and launch)."""
        statement = select(runs.c.run_id).where(runs.c.status.in_(ACTIVE), runs.c.process_id == process_id)
        async with self.engine.connect() as connection:
            return set((await connection.execute(statement)).scalars())

    async def ended_at(self, run_id: str, event_id: str) -> None:
        """The id of the run's `end` event: a rejoin compares with it, a lost log replays it."""
        await self._update(runs.c.run_id == run_id, end_event_id=event_id)

    async def cancel_all(self, tenant_id: str, customer_id: str | None) -> int:
        """Asks every active run of the tenant (or of one customer) to stop: erasure."""
        where = _active_of(tenant_id, customer_id)
        async with self.engine.begin() as connection:
            await connection.execute(update(runs).where(where, runs.c.status == "queued").values(
                status="cancelled", cancel_requested=True, finished_at=utcnow(), error=CANCELLED))
            return (await connection.execute(update(runs).where(where).values(cancel_requested=True))).rowcount

    async def active(self, tenant_id: str, customer_id: str | None) -> int:
        statement = select(func.count()).select_from(runs).where(_active_of(tenant_id, customer_id))
        async with self.engine.connect() as connection:
            return (await connection.execute(statement)).scalar_one()

    async def ids_of_customer(self, tenant_id: str, customer_id: str) -> list[str]:
        """For erasure: each run's events are a channel of their own."""
        statement = select(runs.c.run_id).where(runs.c.tenant_id == tenant_id, runs.c.customer_id == customer_id)
        async with self.engine.connect() as connection:
            return list((await connection.execute(statement)).scalars())

    @finishes_once_started  # a cancelled run's last write must not keep SQLite's lock
    async def _update(self, where: Any, **values: Any) -> bool:
        async with self.engine.begin() as connection:
            return bool((await connection.execute(update(runs).where(where).values(**values))).rowcount)
