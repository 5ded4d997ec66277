"""Which service processes are alive, so runs of a dead one read `interrupted` at once.

Every process registers itself and beats every `AUDIT_HEARTBEAT_S` (a row in
`service_processes`, in the same database as the audit trail, so every replica sees
every other). Each beat also sweeps: a `running` run whose process has not beaten for
`AUDIT_PROCESS_DEAD_AFTER_S` (or has no row any more) died with it and becomes
`interrupted`. A killed replica's
runs are so marked within about `DEAD_AFTER + HEARTBEAT` seconds by any live replica (or
by itself when it restarts), and a live replica's runs are never touched: its beat is
fresh. Runs recorded before processes had ids fall back to `AUDIT_INTERRUPTED_AFTER_S`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from datetime import timedelta

from sqlalchemy import Select, and_, delete, insert, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.audit import CHAINED_RUNS, ai_runs, utcnow
from app.store.audit_chain import chain_records
from app.store.database import service_processes

log = logging.getLogger(__name__)
FORGET_PROCESSES_AFTER = timedelta(days=7)


class ProcessLiveness:
    def __init__(
        self, engine: AsyncEngine, *, heartbeat_s: float, dead_after_s: float, interrupted_after_s: float
    ) -> None:
        self.engine = engine
        self.process_id = uuid.uuid4().hex
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.interrupted_after_s = interrupted_after_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Registers this process, marks runs of dead ones, starts beating.

        A sweep that fails (a run's row or a chain head locked past the database's lock
        timeout by a stuck session) does not fail the start: every beat sweeps again.
        It failed the replica's start-up, and the orchestrator's restart met the same lock."""
        now = utcnow()
        async with self.engine.begin() as connection:
            await connection.execute(insert(service_processes).values(
                process_id=self.process_id, host=socket.gethostname()[:256], started_at=now, last_seen=now))
        try:
            interrupted = await self.sweep()
        except OperationalError as error:
            log.warning("sweeping runs of stopped processes failed at start-up, retried at the next beat: %r", error)
            interrupted = 0
        self._task = asyncio.create_task(self._beat_forever(), name="process-heartbeat")
        return interrupted

    def alive(self) -> Select[tuple[str]]:
        """The ids of processes that beat within `dead_after_s` (a subquery: work held by
        any other process is abandoned)."""
        return select(service_processes.c.process_id).where(
            service_processes.c.last_seen >= utcnow() - timedelta(seconds=self.dead_after_s)
        )

    async def sweep(self) -> int:
        """Marks the runs of processes that stopped beating as `interrupted`; returns how many."""
        now = utcnow()
        orphaned = and_(ai_runs.c.process_id.is_not(None), ai_runs.c.process_id.not_in(self.alive()))
        legacy = and_(ai_runs.c.process_id.is_(None),
                      ai_runs.c.started_at < now - timedelta(seconds=self.interrupted_after_s))
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(ai_runs)
                .where(and_(ai_runs.c.status == "running", or_(orphaned, legacy)))
                .values(status="interrupted")
                .returning(ai_runs.c.run_id)
            )
            # `interrupted` is final: chained here, like a run that finished.
            interrupted = sorted(result.scalars())
            await connection.run_sync(chain_records, CHAINED_RUNS, interrupted, now)
            await connection.execute(delete(service_processes).where(
                service_processes.c.last_seen < now - FORGET_PROCESSES_AFTER))
        return len(interrupted)

    async def beat(self) -> None:
        """Says this process is alive: every `heartbeat_s`, and once right after a long
        start-up (a cold one trains models for a minute), so no replica takes it for dead."""
        async with self.engine.begin() as connection:
            await connection.execute(
                update(service_processes)
                .where(service_processes.c.process_id == self.process_id)
                .values(last_seen=utcnow())
            )

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.beat()
                if interrupted := await self.sweep():
                    log.warning("marked %d runs of stopped processes as interrupted", interrupted)
            except Exception as error:  # noqa: BLE001 - a missed beat is retried at the next one
                log.warning("process heartbeat failed: %r", error)

    async def stop(self) -> None:
        """A clean stop: this process's own runs have finished or been cancelled."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        async with self.engine.begin() as connection:
            await connection.execute(delete(service_processes).where(
                service_processes.c.process_id == self.process_id))
