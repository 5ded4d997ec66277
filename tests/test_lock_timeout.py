"""A statement that waits on a lock PostgreSQL will not grant soon (one a migration or a
stuck session holds) fails its request with a retryable 503 after DATABASE_LOCK_TIMEOUT_S,
instead of holding the request, and a pooled connection, for as long as the lock lasts.
A replica starting while another migrates still waits for it, and a batch of inserts
waiting on a lock is retried whole, not row by row. Real PostgreSQL, real locks."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from app.core.auth import TokenVerifier
from app.server import create_app
from app.store.database import MIGRATION_LOCK, create_engine, database_url, migrate
from app.store.interactions import InteractionLog
from app.store.retries import PAUSES_S
from tests.conftest import make_settings
from tests.support.live_server import live_server
from tests.support.servers import postgres_server
from tests.support.stores import keyring_for
from tests.support.workflows import start, wait_for_status

ANALYSIS = {"customer_id": "lt-cust", "channel": "email", "text": "The invoice is wrong again, please fix it today."}


def test_a_request_waiting_on_a_lock_answers_a_retryable_503_after_the_lock_timeout(tmp_path: Path) -> None:
    with postgres_server() as url:
        settings = make_settings(tmp_path, database_url=url, database_lock_timeout_s=1)
        token = TokenVerifier(settings).mint(tenant_id="acme", user_id="alice", roles=("rep",), ttl_s=600)
        with live_server(create_app(settings)) as base, \
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=20) as http:
            run_id = start(http, "realtime/interactions", ANALYSIS)["id"]
            wait_for_status(http, run_id, {"succeeded"})
            with psycopg.connect(url) as locker:  # one transaction, holding the runs' table
                locker.execute("LOCK TABLE workflow_runs IN ACCESS EXCLUSIVE MODE")
                asked = time.monotonic()
                blocked = http.get(f"/api/v1/ai/workflows/{run_id}")  # without the limit: waits for the lock
                waited = time.monotonic() - asked
            assert blocked.status_code == 503, blocked.text
            assert (blocked.json()["code"], blocked.json()["retryable"]) == ("database_unavailable", True)
            assert waited < 15, f"answered after {waited:.1f} s"
            assert http.get(f"/api/v1/ai/workflows/{run_id}").json()["status"] == "succeeded", "the lock is gone"


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
