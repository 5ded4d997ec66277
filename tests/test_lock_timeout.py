"""A statement that waits on a lock PostgreSQL will not grant soon (one a migration or a
stuck session holds) fails its request with a retryable 503 after DATABASE_LOCK_TIMEOUT_S,
instead of holding the request, and a pooled connection, for as long as the lock lasts.
A replica starting while another migrates still waits for it. Real PostgreSQL, real locks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import psycopg

from app.core.auth import TokenVerifier
from app.server import create_app
from app.store.database import MIGRATION_LOCK
from tests.conftest import make_settings
from tests.support.live_server import live_server
from tests.support.servers import postgres_server
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
