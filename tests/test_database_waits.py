"""Waits on PostgreSQL are bounded. A statement that waits on a lock PostgreSQL will not
grant soon (one a migration or a stuck session holds) fails its request with a retryable
503 after DATABASE_LOCK_TIMEOUT_S, instead of holding the request, and a pooled
connection, for as long as the lock lasts. A replica starting while another migrates
still waits for it, and a batch of inserts waiting on a lock is retried whole, not row by
row; a process's sweep at start-up that meets a lock is left to its next heartbeat. A
server that hangs fails new connections, and the pool's check of open ones, after
DATABASE_CONNECT_TIMEOUT_S. Real PostgreSQL, real locks, really stopped server processes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import event, select, text
from sqlalchemy.exc import OperationalError

from app.core.auth import TokenVerifier
from app.server import create_app
from app.store.audit import AuditLog, ai_runs
from app.store.database import MIGRATION_LOCK, create_engine, database_url, migrate
from app.store.interactions import InteractionLog
from app.store.liveness import ProcessLiveness
from app.store.retries import PAUSES_S
from tests.conftest import make_settings
from tests.support.live_server import live_server
from tests.support.servers import postgres_server
from tests.support.stores import keyring_for
from tests.support.workflows import start, wait_for_status

ANALYSIS = {"customer_id": "lt-cust", "channel": "email", "text": "The invoice is wrong again, please fix it today."}


@contextmanager
def service_with_a_run(tmp_path: Path, url: str, *, http_timeout_s: float, **settings: Any
                       ) -> Iterator[tuple[httpx.Client, str]]:
    """The service on this PostgreSQL, its pooled connections in use, and one finished
    run to read back: a client and the run's id."""
    configured = make_settings(tmp_path, database_url=url, **settings)
    token = TokenVerifier(configured).mint(tenant_id="acme", user_id="alice", roles=("rep",), ttl_s=600)
    with live_server(create_app(configured)) as base, httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=http_timeout_s) as http:
        run_id = start(http, "realtime/interactions", ANALYSIS)["id"]
        wait_for_status(http, run_id, {"succeeded"})
        yield http, run_id


def read_run(http: httpx.Client, run_id: str) -> tuple[httpx.Response, float]:
    """The run read back, and how long that took."""
    asked = time.monotonic()
    response = http.get(f"/api/v1/ai/workflows/{run_id}")
    return response, time.monotonic() - asked


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert (response.json()["code"], response.json()["retryable"]) == ("database_unavailable", True)


def test_a_request_waiting_on_a_lock_answers_a_retryable_503_after_the_lock_timeout(tmp_path: Path) -> None:
    with postgres_server() as url, \
            service_with_a_run(tmp_path, url, http_timeout_s=20, database_lock_timeout_s=1) as (http, run_id):
        with psycopg.connect(url) as locker:  # one transaction, holding the runs' table
            locker.execute("LOCK TABLE workflow_runs IN ACCESS EXCLUSIVE MODE")
            blocked, waited = read_run(http, run_id)  # without the limit: waits for the lock
        assert_unavailable(blocked)
        assert waited < 15, f"answered after {waited:.1f} s"
        assert read_run(http, run_id)[0].json()["status"] == "succeeded", "the lock is gone"


def _parent_of(pid: int) -> int | None:
    """None for a process gone meanwhile."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _postmaster_pid(url: str) -> int:
    """The server process that accepts connections: every session's parent."""
    with psycopg.connect(url) as probe:  # read while the session lives
        backend = probe.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        postmaster = _parent_of(backend)
    assert postmaster is not None
    return postmaster


def test_a_hung_server_fails_new_connections_after_the_connect_timeout(tmp_path: Path) -> None:
    """A stopped postmaster is what a hung server looks like to a client: the kernel still
    accepts the connection, and nobody ever answers it. Without a connect timeout the
    request waits psycopg's 130 s. The service's connections are then terminated (as by a
    restart or a proxy), so the request must connect anew."""
    with postgres_server() as url, \
            service_with_a_run(tmp_path, url, http_timeout_s=30, database_connect_timeout_s=2) as (http, run_id):
        postmaster = _postmaster_pid(url)
        with psycopg.connect(url, autocommit=True) as admin:
            # Stopped first: the service's background tasks reconnect as soon as their
            # connections go, and a connection made in between would serve the request.
            os.kill(postmaster, signal.SIGSTOP)
            try:
                # A session forked just before the stop shows up a moment later (without
                # a database while it authenticates): terminated until twice none is left.
                none_left = 0
                for _ in range(50):
                    others = admin.execute(
                        "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend' AND (datname = 'crm' OR datname IS NULL) "
                        "AND pid <> pg_backend_pid()").fetchone()
                    none_left = none_left + 1 if others == (0,) else 0
                    if none_left == 2:
                        break
                    time.sleep(0.1)
                assert none_left == 2, "the service's sessions did not end"
                hung, waited = read_run(http, run_id)
            finally:
                os.kill(postmaster, signal.SIGCONT)
        assert_unavailable(hung)
        assert 1.5 < waited < 25, f"answered after {waited:.1f} s, not after the 2 s connect timeout"
        assert read_run(http, run_id)[0].json()["status"] == "succeeded", "the server is back"


def _cluster_pids(postmaster: int) -> list[int]:
    """The postmaster and every process it forked (sessions, checkpointer, ...)."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [postmaster, *(pid for pid in pids if _parent_of(pid) == postmaster)]


def test_a_server_that_hangs_under_open_connections_fails_the_pools_check(tmp_path: Path) -> None:
    """Every process of the server stopped (a frozen VM, a storage stall): the kernel
    still acknowledges what the pool's check sends, so no TCP setting ends the wait, and
    every request drawing a pooled connection waited for as long as the server hung. The
    check is bounded now; psycopg then gives its cancel up to 10 s and closes the
    connection, the pool's new one meets the connect timeout, and the request is answered."""
    with postgres_server() as url, \
            service_with_a_run(tmp_path, url, http_timeout_s=60, database_connect_timeout_s=2) as (http, run_id):
        postmaster = _postmaster_pid(url)
        cluster = [postmaster]
        try:
            os.kill(postmaster, signal.SIGSTOP)  # first: it forks no one after the scan
            cluster = _cluster_pids(postmaster)
            for pid in cluster[1:]:
                with suppress(ProcessLookupError):  # one that ended since
                    os.kill(pid, signal.SIGSTOP)
            hung, waited = read_run(http, run_id)
        finally:
            for pid in cluster:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        assert_unavailable(hung)
        # The check (2 s), then psycopg's cancel (5 s) at least: a request that only
        # met the connect timeout, on a connection of its own, came back in 2 s.
        assert 6 < waited < 40, f"answered after {waited:.1f} s"
        assert read_run(http, run_id)[0].json()["status"] == "succeeded", "the server is back"


async def test_the_pools_check_opens_no_transaction() -> None:
    """As SQLAlchemy's own check: a transaction it left open would make a later change
    of autocommit or isolation on that connection fail ("can't change 'autocommit' now")."""
    with postgres_server() as url:
        engine = create_engine(database_url(url, None))
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            async with engine.connect() as connection:  # the pooled one, checked on checkout
                raw = await connection.get_raw_connection()
                assert raw.driver_connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
        finally:
            await engine.dispose()


def test_a_replica_starting_while_another_migrates_waits_past_the_lock_timeout(tmp_path: Path) -> None:
    with postgres_server() as url:
        settings = make_settings(tmp_path, database_url=url, database_lock_timeout_s=0.5)
        with psycopg.connect(url) as other_replica:  # migrating: holds the migration lock for 2 s
            other_replica.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            threading.Timer(2.0, other_replica.rollback).start()
            with live_server(create_app(settings)) as base:  # without the exemption: its wait is cancelled
                assert httpx.get(f"{base}/health", timeout=10).status_code == 200


async def test_a_batch_of_inserts_waiting_on_a_lock_is_retried_whole_not_row_by_row() -> None:
    """Row by row is for a row the database refuses; a lock (or an outage) fails every row
    alike, and 20 rows retried one by one made 81 attempts, each waiting out the timeout."""
    with postgres_server() as url:
        engine = create_engine(database_url(url, None), lock_timeout_s=0.2)
        await migrate(engine)
        interactions = InteractionLog(engine, keyring_for(engine))
        analysis = {"sentiment": {"label": "negative", "score": -0.5}, "intent": "complaint", "summary": "late again"}
        attempts: list[str] = []
        try:
            # The tenant's key is made and cached now, so the 20 below queue in one turn: one batch.
            await interactions.record("acme", "c-before", "email", analysis)
            event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: attempts.append(args[2])
                         if args[2].startswith("INSERT INTO customer_interactions") else None)
            with psycopg.connect(url) as locker:
                locker.execute("LOCK TABLE customer_interactions IN ACCESS EXCLUSIVE MODE")
                results = await asyncio.gather(*(interactions.record("acme", f"c-{n}", "email", analysis)
                                                 for n in range(20)), return_exceptions=True)
            assert all(isinstance(result, OperationalError) for result in results), results
            assert len(attempts) == 1 + len(PAUSES_S) + 1, "one batch, then the batch retried whole"
            await interactions.record("acme", "c-after", "email", analysis)  # the lock is gone: stored
            assert [p.intent for p in await interactions.recent("acme", "c-after")] == ["complaint"]
        finally:
            await interactions.close()
            await engine.dispose()


async def test_a_sweep_at_start_up_that_meets_a_lock_is_left_to_the_next_beat() -> None:
    """At start-up a process marks the runs of stopped processes `interrupted`. A stuck
    session holding the runs past the lock timeout failed the start-up, and a restart met
    the same lock; now the process starts, and its beats sweep once the lock is gone."""
    with postgres_server() as url:
        engine = create_engine(database_url(url, None), lock_timeout_s=0.3)
        await migrate(engine)
        audit = AuditLog(engine, keyring_for(engine), interrupted_after_s=900, process_id="stopped-process")
        await audit.begin_run(run_id="orphan", tenant_id="acme", user_id="u", chain="scoring", endpoint="invoke")
        await audit.close()
        liveness = ProcessLiveness(engine, heartbeat_s=0.2, dead_after_s=30, interrupted_after_s=900)

        async def status() -> str:
            async with engine.connect() as connection:
                return str((await connection.execute(select(ai_runs.c.status))).scalar_one())

        try:
            with psycopg.connect(url) as locker:  # reads go on; the sweep's UPDATE waits
                locker.execute("LOCK TABLE ai_runs IN SHARE MODE")
                assert await liveness.start() == 0
                assert await status() == "running"
            for _ in range(100):  # the lock is gone with its transaction
                if await status() == "interrupted":
                    break
                await asyncio.sleep(0.1)
            assert await status() == "interrupted", "no beat swept after the lock went"
        finally:
            await liveness.stop()
            await engine.dispose()
