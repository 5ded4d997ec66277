"""A WebSocket feed that fails must not close as if it were done.

A normal close (1000) tells a client the feed has ended: a background run's feed closes
so after its `end`, and the console does not reconnect after one. Here a real PostgreSQL
stops under a service: a run's feed, which reads the run's record, then closes 1013 with
the same code an HTTP answer carries (`database_unavailable`), so the client reconnects
and resumes once the database is back. A fault inside a session (its replay breaking)
closes 1011, and the session is still counted out. An SSE feed that fails after its
response began ends with an `error` event carrying the same code, not a cut connection; a
client that leaves before authenticating is no error of the server's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect

from app.core.auth import TokenVerifier
from app.server import create_app
from tests.conftest import make_settings
from tests.support.feeds import RESUME_FROM, break_the_replay, close_of
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
        break_the_replay(monkeypatch, app)
        sessions_before = REGISTRY.get_sample_value("ai_websocket_sessions")
        code, reason = asyncio.run(close_of(base, token, f"/ws/ai/insights/ff-cust?last_event_id={RESUME_FROM}"))
        assert (code, reason) == (1011, "internal_error: Internal Server Error"), "no detail of the fault leaves"
        assert REGISTRY.get_sample_value("ai_websocket_sessions") == sessions_before


@pytest.mark.parametrize("customer_id", ["ff-cust", "stream"])  # "stream": the path ends as a chain's stream does
def test_an_sse_feed_that_fails_midway_ends_with_an_error_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, customer_id: str
) -> None:
    """The response (200, its headers) is sent before the feed reads anything, so a failure
    after it cannot become an HTTP error: it cut the connection, and EventSource retried a
    fault every few seconds with nothing to tell the screen why."""
    settings = make_settings(tmp_path)
    token = TokenVerifier(settings).mint(tenant_id="acme", user_id="alice", roles=("rep",), ttl_s=600)
    app = create_app(settings)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30,
                                                headers={"Authorization": f"Bearer {token}"}) as http:
        break_the_replay(monkeypatch, app)
        sessions_before = REGISTRY.get_sample_value("ai_sse_sessions")
        with connect_sse(http, "GET", f"/api/v1/ai/stream/insights/{customer_id}",
                         headers={"Last-Event-ID": RESUME_FROM}) as source:
            assert source.response.status_code == 200
            events = [(sse.event, sse.data, sse.retry) for sse in source.iter_sse()]  # raises on a cut connection
    fault = json.dumps({"code": "internal_error", "message": "Internal Server Error", "retryable": False})
    assert events == [("error", fault, 30_000)], "no detail of the fault leaves; EventSource waits 30 s to retry"
    assert REGISTRY.get_sample_value("ai_sse_sessions") == sessions_before


def test_a_client_leaving_before_its_auth_message_is_not_a_server_error(tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    uvicorn_log = logging.getLogger("uvicorn.error")  # where uvicorn reports an app's exception

    async def leave_unauthenticated(base: str) -> None:
        async with connect(base.replace("http://", "ws://") + "/ws/ai/insights/ff-cust"):
            pass  # closes without sending the auth message
        await asyncio.sleep(0.5)  # the server reads the close

    with live_server(create_app(make_settings(tmp_path))) as base:
        uvicorn_log.addHandler(handler)  # after uvicorn configured its logging, which drops handlers
        try:
            asyncio.run(leave_unauthenticated(base))
        finally:
            uvicorn_log.removeHandler(handler)
    assert [record.getMessage() for record in records] == []
