"""Tamper-evident audit: `python -m app audit verify`, run as an operator runs it against
the configured database, finds every edited, deleted or truncated record; concurrent
writers keep one valid chain per tenant. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, select, text

from app.store.audit import AuditLog
from app.store.audit_chain import audit_chain, audit_chain_heads
from app.store.database import MIGRATIONS, create_engine, database_url as to_async_url, migrate
from app.store.database_work import INLINE_MAX_ROWS
from app.store.liveness import ProcessLiveness
from tests.conftest import EngineEvents
from tests.support.replicas import PROJECT_ROOT
from tests.support.stores import keyring_for


@pytest.fixture
def url(database_url: str | None, tmp_path: Path) -> str:
    """A fresh database per test: a SQLite file, or a new PostgreSQL database."""
    if database_url is None:
        return to_async_url(None, tmp_path / "audit.sqlite3")
    name = f"audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return to_async_url(database_url.rsplit("/", 1)[0] + f"/{name}", Path("/unused"))


def verify(url: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "DATA_DIR", "APP_", "AUTH_"))}
    return subprocess.run(
        [sys.executable, "-m", "app", "audit", "verify"], cwd=PROJECT_ROOT, capture_output=True, text=True,
        env={**clean, "DATABASE_URL": url, "APP_ENV": "test"}, timeout=120,
    )


async def record_some(url: str) -> None:
    """Two tenants' runs and events, and a tenant-less event, through the service's writer."""
    engine = create_engine(url)
    await migrate(engine)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    for tenant in ("acme", "globex"):
        for n in range(3):
            run_id = f"{tenant}-run-{n}"
            await audit.begin_run(run_id=run_id, tenant_id=tenant, user_id="u", chain="scoring", endpoint="invoke")
            await audit.run_finished(run_id, status="ok", tokens_in=10 + n, tokens_out=5, cost_usd=0.000123,
                                     latency_ms=12.5, degraded=False, model="m", provider="p")
            await audit.security_event(tenant_id=tenant, user_id="u", run_id=run_id, kind="prompt_injection",
                                       detail={"excerpt": f"ignore previous instructions {n}", "é": "ü"})
    await audit.begin_run(run_id="still-running", tenant_id="acme", user_id="u", chain="scoring", endpoint="invoke")
    await audit.security_event(tenant_id="-", user_id="-", run_id=None, kind="token_rejected",
                               detail={"reason": "invalid_token"}, route="/api/v1/ai/usage", client_address="10.0.0.9")
    await audit.close()
    await engine.dispose()


async def execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))
    await engine.dispose()


async def heads(url: str) -> dict[str, tuple[int, str]]:
    engine = create_engine(url)
    async with engine.connect() as connection:
        rows = (await connection.execute(select(audit_chain_heads))).all()
    await engine.dispose()
    return {row.tenant_id: (row.seq, row.hash) for row in rows}


async def test_an_intact_trail_verifies_and_prints_each_tenants_head(url: str) -> None:
    await record_some(url)
    result = verify(url)
    assert result.returncode == 0, result.stdout + result.stderr
    stored = await heads(url)
    assert stored["acme"][0] == 6 and stored["globex"][0] == 6 and stored["-"][0] == 1, "running runs wait"
    for tenant, (seq, digest) in stored.items():
        assert f"tenant {tenant}: {seq} links, head seq {seq} hash {digest}: ok" in result.stdout


async def test_an_edited_column_is_reported_with_its_tenant_and_record(url: str) -> None:
    await record_some(url)
    await execute(url, "UPDATE ai_runs SET tokens_out = 1 WHERE run_id = 'globex-run-1'")
    result = verify(url)
    assert result.returncode == 1
    assert re.search(r"TAMPERED tenant globex: seq \d+ \(run globex-run-1\): .*edited", result.stdout), result.stdout
    assert "tenant acme: 6 links" in result.stdout and "acme: seq" not in result.stdout, "acme is intact"


async def test_an_edited_event_detail_is_reported(url: str) -> None:
    await record_some(url)
    await execute(url, "UPDATE security_events SET detail = '{\"excerpt\": \"nothing to see\"}' "
                       "WHERE tenant_id = 'acme' AND kind = 'prompt_injection' AND id = "
                       "(SELECT MIN(id) FROM security_events WHERE tenant_id = 'acme')")
    result = verify(url)
    assert result.returncode == 1
    assert re.search(r"TAMPERED tenant acme: seq \d+ \(security_event \d+\): .*edited", result.stdout), result.stdout


async def test_a_deleted_row_is_reported(url: str) -> None:
    await record_some(url)
    await execute(url, "DELETE FROM ai_runs WHERE run_id = 'acme-run-2'")
    result = verify(url)
    assert result.returncode == 1
    assert re.search(r"TAMPERED tenant acme: seq \d+ \(run acme-run-2\): the record was deleted", result.stdout)


async def test_truncated_tables_are_reported(url: str) -> None:
    await record_some(url)
    await execute(url, "DELETE FROM security_events")  # SQLite's TRUNCATE
    result = verify(url)
    assert result.returncode == 1
    assert result.stdout.count("the record was deleted") == 7, result.stdout  # 3 + 3 + the tenant-less one


async def test_a_chopped_chain_tail_and_its_unchained_records_are_reported(url: str) -> None:
    await record_some(url)
    await execute(url, "DELETE FROM audit_chain WHERE tenant_id = 'globex' AND seq > 4")
    chopped = verify(url)
    assert chopped.returncode == 1
    assert "tenant globex: seq 6 (head): the head says seq 6 but the chain ends at seq 4" in chopped.stdout
    # Someone who also rewinds the head still leaves the records off the chain.
    await execute(url, "DELETE FROM audit_chain_heads WHERE tenant_id = 'globex'",
                  "INSERT INTO audit_chain_heads (tenant_id, seq, hash) SELECT tenant_id, seq, hash "
                  "FROM audit_chain WHERE tenant_id = 'globex' AND seq = 4")
    rewound = verify(url)
    assert rewound.returncode == 1 and "head says" not in rewound.stdout
    assert len(re.findall(r"TAMPERED tenant globex: no link \(\S+ \S+\): the record is not on the chain",
                          rewound.stdout)) == 2, rewound.stdout


async def test_interrupted_runs_are_chained_and_chained_again_if_they_finish_after_all(url: str) -> None:
    await record_some(url)
    engine = create_engine(url)
    liveness = ProcessLiveness(engine, heartbeat_s=60, dead_after_s=30, interrupted_after_s=0)
    assert await liveness.sweep() == 1  # "still-running" belonged to process p1, which never beat
    result = verify(url)
    assert result.returncode == 0, result.stdout
    assert "tenant acme: 7 links" in result.stdout
    # A process only thought dead (a late heartbeat) finishes the run after all.
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    await audit.run_finished("still-running", status="ok", tokens_in=1, tokens_out=2, cost_usd=0.0,
                             latency_ms=3.0, degraded=False)
    await audit.close()
    await engine.dispose()
    finished = verify(url)
    assert finished.returncode == 0, finished.stdout
    assert "tenant acme: 8 links" in finished.stdout
    await execute(url, "UPDATE ai_runs SET status = 'interrupted' WHERE run_id = 'still-running'")
    edited = verify(url)
    assert edited.returncode == 1 and "(run still-running): the record's stored values changed" in edited.stdout


async def test_concurrent_writers_keep_one_gap_free_chain_in_few_commits(url: str, engine_events: EngineEvents) -> None:
    engines = [create_engine(url), create_engine(url)]
    await migrate(engines[0])
    commits = [0]
    engine_events(engines[0], "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))  # both: one database
    writers = [AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id=f"p{i}") for i, engine in enumerate(engines)]

    async def write(writer: AuditLog, n: int) -> None:
        await writer.security_event(tenant_id=("acme", "globex")[n % 2], user_id=f"u{n}", run_id=None,
                                    kind="forbidden_role", detail={"n": n})

    await asyncio.gather(*(write(writers[n % 2], n) for n in range(1_000)))
    for writer in writers:
        await writer.close()
    # Batches of up to 1,000 on PostgreSQL; of up to INLINE_MAX_ROWS on SQLite, written on
    # the loop's thread (so at least 10 commits there). One record a commit is 1,000.
    most = 10 if engines[0].dialect.name == "postgresql" else 2 * 1_000 // INLINE_MAX_ROWS
    assert commits[0] <= most, f"{commits[0]} commits for 1,000 records: batching was lost"
    async with engines[0].connect() as connection:
        links = (await connection.execute(select(audit_chain.c.tenant_id, audit_chain.c.seq))).all()
    for engine in engines:
        await engine.dispose()
    for tenant in ("acme", "globex"):
        assert sorted(seq for t, seq in links if t == tenant) == list(range(1, 501))
    result = verify(url)
    assert result.returncode == 0, result.stdout


async def test_a_batch_of_finished_runs_is_one_statement_per_shape_each_run_its_own_values(
        url: str, engine_events: EngineEvents) -> None:
    """Under a burst the writer takes up to 1,000 finishes at once (100 on SQLite); each
    new run's start record (and so its first event) waits behind that batch, so it must
    not be one round trip per run."""
    engine = create_engine(url)
    await migrate(engine)
    updates: list[int] = []
    engine_events(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, params, _ctx, many: updates.append(len(params) if many else 1)
                 if statement.lstrip().upper().startswith("UPDATE AI_RUNS") else None)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    for n in range(40):
        await audit.begin_run(run_id=f"run-{n}", tenant_id=("acme", "globex")[n % 2], user_id="u",
                              chain="scoring", endpoint="invoke")
    for n in range(40):  # queued together: the writer takes them as one batch
        shape = {"error_code": "boom"} if n % 4 == 0 else {}
        await audit.run_finished(f"run-{n}", wait=n == 39, status="error" if shape else "ok", tokens_in=n,
                                 tokens_out=2 * n, cost_usd=0.0, latency_ms=1.0, degraded=False, **shape)
    await audit.close()
    async with engine.connect() as connection:
        rows = (await connection.execute(text("SELECT run_id, status, tokens_in, tokens_out, error_code FROM ai_runs"))).all()
    await engine.dispose()
    assert sorted(updates) == [10, 30], f"UPDATE statements and their rows: {updates}"
    stored = {row.run_id: tuple(row[1:]) for row in rows}
    assert stored == {f"run-{n}": ("error" if n % 4 == 0 else "ok", n, 2 * n, "boom" if n % 4 == 0 else None)
                      for n in range(40)}
    result = verify(url)
    assert result.returncode == 0, result.stdout
    assert "tenant acme: 20 links" in result.stdout and "tenant globex: 20 links" in result.stdout


async def test_a_tenants_head_is_made_once_then_read_and_locked_in_one_statement(
        url: str, engine_events: EngineEvents) -> None:
    """Each batch of finished runs holds the next runs' start records (their first
    events) behind it: a head that exists is not inserted-if-missing again."""
    engine = create_engine(url)
    await migrate(engine)
    head_statements: list[str] = []
    engine_events(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: head_statements.append(statement.lstrip().split()[0].upper())
                 if "audit_chain_heads" in statement else None)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    for n in range(3):
        await audit.begin_run(run_id=f"run-{n}", tenant_id="acme", user_id="u", chain="scoring", endpoint="invoke")
        await audit.run_finished(f"run-{n}", status="ok", tokens_in=n, tokens_out=n, cost_usd=0.0,
                                 latency_ms=1.0, degraded=False)
    await audit.close()
    await engine.dispose()
    assert head_statements == ["SELECT", "INSERT", "SELECT", "UPDATE"] + ["SELECT", "UPDATE"] * 2, head_statements
    result = verify(url)
    assert result.returncode == 0 and "tenant acme: 3 links" in result.stdout, result.stdout


async def test_records_written_before_the_chain_existed_are_chained_by_the_migration(url: str) -> None:
    def up_to_0005_with_records(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
        connection.execute(text(
            "INSERT INTO ai_runs (run_id, tenant_id, user_id, chain, status, tokens_in, tokens_out, cost_usd,"
            " degraded, started_at) VALUES ('old-run', 'acme', 'u', 'scoring', 'ok', 3, 4, 0.5, false,"
            " CURRENT_TIMESTAMP), ('old-running', 'acme', 'u', 'scoring', 'running', 0, 0, 0, false, CURRENT_TIMESTAMP)"))
        connection.execute(text(
            "INSERT INTO security_events (tenant_id, user_id, kind, detail, created_at)"
            " VALUES ('acme', 'u', 'prompt_injection', '{\"excerpt\": \"old\"}', CURRENT_TIMESTAMP)"))

    engine = create_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(up_to_0005_with_records)
    await migrate(engine)
    await engine.dispose()
    result = verify(url)
    assert result.returncode == 0, result.stdout
    assert "tenant acme: 2 links" in result.stdout, "the finished run and the event; the running run waits"
    await execute(url, "UPDATE ai_runs SET cost_usd = 0 WHERE run_id = 'old-run'")
    assert "(run old-run): the record's stored values changed" in verify(url).stdout


async def test_close_commits_every_queued_record_even_one_being_written(url: str) -> None:
    """The service closes its audit log at shutdown: a record queued without waiting (the
    security log's path) is still written, including the batch the writer is in the middle
    of when close() is called, and the chain has no gap."""
    engine = create_engine(url)
    await migrate(engine)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    for n in range(1_500):  # more than one batch: the writer is mid-batch when the queue looks empty
        audit.enqueue_security_event(tenant_id="acme", user_id=f"u{n}", run_id=None, kind="forbidden_role",
                                     detail={"n": n})
    await audit.close()
    async with engine.connect() as connection:
        users = (await connection.execute(text("SELECT user_id FROM security_events"))).scalars().all()
        links = (await connection.execute(select(audit_chain.c.seq))).scalars().all()
    await engine.dispose()
    assert sorted(users) == sorted(f"u{n}" for n in range(1_500))
    assert sorted(links) == list(range(1, 1_501))


async def test_events_with_and_without_a_route_committed_in_one_batch(url: str) -> None:
    """The writer inserts a batch's events in one statement: an event that names its route
    and client next to one that does not must not fail the batch (and every record in it)."""
    engine = create_engine(url)
    await migrate(engine)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    audit.enqueue_security_event(tenant_id="acme", user_id="u1", run_id=None, kind="token_rejected",
                                 detail={}, route="/api/v1/ai/usage", client_address="10.0.0.9")
    audit.enqueue_security_event(tenant_id="acme", user_id="u2", run_id="r", kind="prompt_injection", detail={})
    await audit.security_event(tenant_id="acme", user_id="u3", run_id=None, kind="forbidden_role", detail={},
                               route="/api/v1/ai/usage")
    await audit.close()
    async with engine.connect() as connection:
        rows = (await connection.execute(text("SELECT user_id, route, client_address FROM security_events"))).all()
    await engine.dispose()
    assert sorted(tuple(row) for row in rows) == [
        ("u1", "/api/v1/ai/usage", "10.0.0.9"), ("u2", None, None), ("u3", "/api/v1/ai/usage", None)]


async def test_a_new_tenants_first_event_in_a_batch_with_other_records_loses_nothing(url: str) -> None:
    """One batch: another tenant's run and the first security event of a tenant with no
    data key yet. On SQLite the key, made inside the batch's transaction, waited for that
    transaction's own write lock, failed at the busy timeout at every retry, and the whole
    batch was lost."""
    engine = create_engine(url)
    await migrate(engine)
    audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="p1")
    try:
        started = audit.begin_run(run_id="r1", tenant_id="acme", user_id="u", chain="scoring", endpoint="invoke")
        audit.enqueue_security_event(tenant_id="brand-new", user_id="v", run_id=None, kind="forbidden_role",
                                     detail={"required": ["rep"]})  # queued now: the same batch
        await asyncio.wait_for(started, 60)
        await audit.close()
        runs = await audit.recent_runs("acme", 10)
        events = await audit.recent_security_events("brand-new", 10)
    finally:
        await engine.dispose()
    assert [run["run_id"] for run in runs] == ["r1"]
    assert [(event["kind"], event["detail"]) for event in events] == [("forbidden_role", {"required": ["rep"]})]
