"""SQLite work on the event loop's thread (`app.store.database_work`), through the stores
that use it: done there when SQLite answers at once, through the driver's thread when
another writer holds the lock (the loop never waits for it), and the write-ahead log
checkpointed off the loop."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import threading
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import database_work as work_module
from app.store.audit import START_NOW_PER_TURN, AuditLog, ai_runs, security_events
from app.store.database import create_engine, database_url, migrate
from app.store.database_work import INLINE_MAX_ROWS, database_work
from app.store.interactions import InteractionLog, interactions
from tests.support.stores import keyring_for


def work_count(kind: str, path: str) -> float:
    return REGISTRY.get_sample_value("ai_sqlite_work_total", {"kind": kind, "path": path}) or 0.0


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    made = create_engine(database_url(None, tmp_path / "work.sqlite3"))
    await migrate(made)
    yield made
    await database_work(made).close()
    await made.dispose()


async def start_run(audit: AuditLog, run_id: str) -> None:
    await audit.begin_run(run_id=run_id, tenant_id="acme", user_id="u", chain="scoring", endpoint="invoke")


async def count_runs(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(ai_runs))).scalar_one())


async def test_records_are_written_on_the_loop_and_wait_in_the_drivers_thread_while_another_writer_holds_the_lock(
        engine: AsyncEngine) -> None:
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    inline, busy = work_count("write", "inline"), work_count("write", "busy")
    await start_run(audit, "free")
    assert (work_count("write", "inline") - inline, work_count("write", "busy") - busy) == (1, 0)

    # Another process's writer holds the lock, and lets it go half a second later. Had the
    # loop's connection waited for it, the record would have been written inline then.
    other = sqlite3.connect(str(engine.url.database), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: (other.execute("COMMIT"), other.close()))
    release.start()
    try:
        write = asyncio.create_task(start_run(audit, "held"))
        await asyncio.sleep(0.2)
        assert not write.done(), "written while another writer held the lock"
        await write
    finally:
        release.join()
    assert (work_count("write", "inline") - inline, work_count("write", "busy") - busy) == (1, 1)
    await audit.close()
    assert await count_runs(engine) == 2


async def test_a_batch_too_large_to_hold_the_loop_goes_through_the_drivers_thread(engine: AsyncEngine) -> None:
    """The interaction history's group commit: a burst of rows queued together is one
    batch, and past `INLINE_MAX_ROWS` SQLite's time for it is the driver thread's."""
    history = InteractionLog(engine, keyring_for(engine))
    analysis = {"sentiment": {"label": "positive", "score": 0.5}, "summary": "fine"}
    await history.record("acme", "c0", "chat", analysis)  # the tenant's key made and cached
    inline, large = work_count("write", "inline"), work_count("write", "large")
    await asyncio.gather(*(history.record("acme", f"c{n}", "chat", analysis)
                           for n in range(1, INLINE_MAX_ROWS + 2)))  # queued as one batch
    await history.close()
    assert (work_count("write", "inline") - inline, work_count("write", "large") - large) == (0, 1)
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(interactions))).scalar_one() == \
            INLINE_MAX_ROWS + 2


async def test_a_burst_of_audit_records_is_written_on_the_loop_in_pieces_with_turns_between(
        engine: AsyncEngine) -> None:
    """The audit writer's batches stay small enough for the loop's thread, where a burst's
    start records (which its first events wait for) are committed without the driver
    thread's round trips; and the loop turns between two batches, so other streams go on
    and no turn holds the whole burst."""
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    other = sqlite3.connect(str(engine.url.database))
    burst = START_NOW_PER_TURN + 3 * INLINE_MAX_ROWS + 5
    inline, large = work_count("write", "inline"), work_count("write", "large")
    try:
        committed = asyncio.gather(*(
            audit.begin_run(run_id=f"r{n}", tenant_id="acme", user_id="u", chain="scoring", endpoint="stream")
            for n in range(burst)))
        seen = []  # what another connection sees committed, at each turn of the loop
        while not committed.done():
            seen.append(other.execute("SELECT count(*) FROM ai_runs").fetchone()[0])
            await asyncio.sleep(0)
        await committed
    finally:
        other.close()
        await audit.close()
    steps = [later - earlier for earlier, later in zip(seen, seen[1:], strict=False) if later != earlier]
    assert seen[0] == START_NOW_PER_TURN and steps == [INLINE_MAX_ROWS] * 3 + [5]
    # The few written at once, then four batches: every one on the loop's thread.
    assert (work_count("write", "inline") - inline, work_count("write", "large") - large) == \
        (START_NOW_PER_TURN + 4, 0)
    assert await count_runs(engine) == burst


async def test_a_start_record_is_committed_in_the_callers_turn_a_few_a_turn(engine: AsyncEngine) -> None:
    """A run's first event waits for its start record: written at once, it does not wait
    for the writer's turn. A burst still goes to the writer, as one batch."""
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    other = sqlite3.connect(str(engine.url.database))
    try:
        committed = [audit.begin_run(run_id=f"r{n}", tenant_id="acme", user_id="u", chain="scoring",
                                     endpoint="stream") for n in range(START_NOW_PER_TURN + 2)]
        # No turn of the loop yet: what is done is committed, seen from another connection.
        assert [c.done() for c in committed] == [True] * START_NOW_PER_TURN + [False] * 2
        seen = {row[0] for row in other.execute("SELECT run_id FROM ai_runs")}
        assert seen == {f"r{n}" for n in range(START_NOW_PER_TURN)}
        await asyncio.gather(*committed)
        await asyncio.sleep(0)  # a new turn: a start record is written at once again
        assert audit.begin_run(run_id="next", tenant_id="acme", user_id="u", chain="scoring",
                               endpoint="stream").done()
    finally:
        other.close()
        await audit.close()
    assert await count_runs(engine) == START_NOW_PER_TURN + 3


async def test_the_loops_connections_close_with_the_engine_and_let_it_go(tmp_path: Path) -> None:
    path = tmp_path / "closed.sqlite3"
    engine = create_engine(database_url(None, path))
    await migrate(engine)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    await start_run(audit, "r1")
    await audit.close()
    await database_work(engine).close()  # as the service stops: the checkpoint in flight ends
    await engine.dispose()
    assert open_files(path) == [], "a connection to the file outlived the engine's dispose()"
    gone = weakref.ref(engine)
    del engine, audit
    gc.collect()
    assert gone() is None, "the engine is still referenced"


def open_files(path: Path) -> list[str]:
    """This process's open files that are the database or its logs."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor, closed since
            continue
    return [name for name in names if name.startswith(str(path))]


async def test_with_inline_work_off_every_write_goes_through_the_drivers_thread(tmp_path: Path) -> None:
    engine = create_engine(database_url(None, tmp_path / "off.sqlite3"), inline_sqlite=False)
    await migrate(engine)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    inline = work_count("write", "inline")
    try:
        await start_run(audit, "r1")
        await audit.close()
        assert work_count("write", "inline") == inline
        assert await count_runs(engine) == 1
    finally:
        await engine.dispose()


async def test_the_write_ahead_log_is_checkpointed_while_writes_go_on(
        engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's connection never checkpoints (a checkpoint syncs the file to disk);
    without the checkpoints it schedules, the log grows with every write until the
    process ends."""
    monkeypatch.setattr(work_module, "CHECKPOINT_EVERY_S", 0.2)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    wal = Path(f"{engine.url.database}-wal")
    detail = {"excerpt": "x" * 20_000}
    written = 0
    for _ in range(40):  # 16 MB of text over about 2 s
        await asyncio.gather(*(audit.security_event(tenant_id="acme", user_id="u", run_id=None,
                                                    kind="prompt_injection", detail=detail) for _ in range(20)))
        written += 20 * len(detail["excerpt"])
        await asyncio.sleep(0.05)
    await audit.close()
    async with engine.connect() as connection:
        stored = (await connection.execute(select(func.count()).select_from(security_events))).scalar_one()
    assert stored == 800
    assert wal.stat().st_size < written / 2, f"the log holds {wal.stat().st_size} bytes after {written} written"
