"""A WebSocket feed that fails must not close as if it were done.

A normal close (1000) tells a client the feed has ended: a background run's feed closes
so after its `end`, and the console does not reconnect after one. Here a real PostgreSQL
stops under a service: a run's feed, which reads the run's record, then closes 1013 with
the same code an HTTP answer carries (`database_unavailable`), so the client reconnects
and resumes once the database is back. A fault inside a session (its replay breaking)
closes 1011, and the session is still counted out.
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from app.core.auth import TokenVerifier
from app.server import create_app
from tests.conftest import make_settings
from tests.support.feeds import close_of
from tests.support.live_server import live_server
from tests.support.servers import postgres_server
from tests.support.workflows import follow_ws, start, wait_for_status

ANALYSIS = {"customer_id": "ff-cust", "channel": "email", "text": "The invoice is wrong again, please fix it today."}


def test_a_database_outage_closes_a_run_feed_1013_with_the_errors_code_not_1000(tmp_path: Path) -> None:
    with ExitStack() as database:
        settings = make_settings(tmp_path, database_url=database.enter_context(postgres_server()))
        token = TokenVerifier(settings).mint(tenant_id="acme", user_id="alice", roles=("rep",), ttl_s=600)
        with live_server(create_app(settings)) as base, \
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            run_id = start(http, "realtime/interactions", ANALYSIS)["id"]
            wait_for_status(http, run_id, {"succeeded"})
            assert asyncio.run(follow_ws(base, token, run_id))[-1]["type"] == "end"
            assert asyncio.run(close_of(base, token, f"/ws/ai/workflows/{run_id}")) == (1000, ""), "a finished run's feed is done"

            database.close()  # PostgreSQL stops; the service goes on

            code, reason = asyncio.run(close_of(base, token, f"/ws/ai/workflows/{run_id}"))
            assert code == 1013, f"closed {code} {reason!r}, not 1013 (try again later)"
            assert reason.startswith("database_unavailable:")
            refused = http.get(f"/api/v1/ai/stream/workflows/{run_id}")  # the SSE feed, before its response
            assert (refused.status_code, refused.json()["code"]) == (503, "database_unavailable")


def test_a_fault_inside_a_session_closes_1011_and_counts_the_session_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    token = TokenVerifier(settings).mint(tenant_id="acme", user_id="alice", roles=("rep",), ttl_s=600)
    app = create_app(settings)
    with live_server(app) as base:
        async def broken_replay(channel: str, after_id: str | None) -> list[object]:
            raise RuntimeError("a bug in the replay")

        monkeypatch.setattr(app.state.services.bus, "history", broken_replay)
        sessions_before = REGISTRY.get_sample_value("ai_websocket_sessions")
        code, reason = asyncio.run(close_of(base, token, "/ws/ai/insights/ff-cust?last_event_id=1700000000000-0"))
        assert (code, reason) == (1011, "internal_error: Internal Server Error"), "no detail of the fault leaves"
        assert REGISTRY.get_sample_value("ai_websocket_sessions") == sessions_before
