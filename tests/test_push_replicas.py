"""Real-time push across two uvicorn replicas sharing a real Redis.

Replica A serves the watchers, replica B the analyses; events travel through Redis
Streams, so a watcher that reconnects (to either replica) replays what it missed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.api.chains import INTERACTIONS_PATH, LEAD_SCORING_PATH
from app.core.auth import TokenVerifier
from tests.conftest import TEST_DATA_KEY, TEST_SECRET, make_settings
from tests.support.replicas import replica
from tests.support.servers import redis_server


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    base = tmp_path_factory.mktemp("replicas")
    with redis_server(base / "redis") as redis_url:
        env = {"AUTH_JWT_SECRET": TEST_SECRET, "DATA_ENCRYPTION_KEY": TEST_DATA_KEY, "APP_ENV": "test", "REDIS_URL": redis_url,
               "LLM_PROVIDERS": "local"}
        with replica({**env, "DATA_DIR": str(base / "a")}, base / "a.log") as a, \
                replica({**env, "DATA_DIR": str(base / "b")}, base / "b.log") as b:
            yield a, b


VERIFIER = TokenVerifier(make_settings(Path("/nonexistent"), auth_jwt_secret=TEST_SECRET))


def token(tenant: str, roles: tuple[str, ...] = ("rep",)) -> str:
    return VERIFIER.mint(tenant_id=tenant, user_id=f"{tenant}-user", roles=roles)


def ws_url(http_url: str, path: str) -> str:
    return http_url.replace("http://", "ws://") + path


async def watch(url: str, customer: str, tenant: str, **query: str) -> ClientConnection:
    """Connects; without a resume point the first message is `ready` (replay comes first)."""
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    ws = await connect(ws_url(url, f"/ws/ai/insights/{customer}{suffix}"),
                       additional_headers={"Authorization": f"Bearer {token(tenant)}"})
    if not query:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"
    return ws


async def analyse(url: str, tenant: str, customer: str, text: str, endpoint: str = "invoke") -> None:
    body: dict[str, Any] = {"customer_id": customer, "text": text, "channel": "chat"}
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {token(tenant)}"}) as http:
        if endpoint == "batch":
            response = await http.post(f"{INTERACTIONS_PATH}/batch", json={"inputs": [body]})
        else:
            response = await http.post(f"{INTERACTIONS_PATH}/{endpoint}", json={"input": body})
        assert response.status_code == 200, response.text


async def next_event(ws: ClientConnection, timeout_s: float) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        if message["type"] not in ("heartbeat", "ready"):
            return message


async def test_insight_from_replica_b_reaches_watcher_on_replica_a(replicas: tuple[str, str]) -> None:
    a, b = replicas
    ws = await watch(a, "cust-9", "acme")
    try:
        for endpoint in ("invoke", "stream", "batch"):
            started = time.monotonic()
            await analyse(b, "acme", "cust-9", f"Please send the contract via {endpoint}.", endpoint)
            event = await next_event(ws, timeout_s=2.0)
            assert time.monotonic() - started < 2.0 + 1.0  # the analysis itself included
            assert event["type"] == "insight" and event["tenant_id"] == "acme"
            assert event["customer_id"] == "cust-9" and "sentiment" in event["data"]
            assert f"via {endpoint}" in event["data"]["summary"], "this message's analysis, not another's"
    finally:
        await ws.close()


async def test_other_tenant_watching_the_same_customer_id_receives_nothing(replicas: tuple[str, str]) -> None:
    a, b = replicas
    own = await watch(a, "cust-shared", "acme")
    other = await watch(a, "cust-shared", "globex")
    try:
        await analyse(b, "acme", "cust-shared", "We are thrilled with the campaign results!")
        assert (await next_event(own, 2.0))["tenant_id"] == "acme"
        with pytest.raises(TimeoutError):
            await next_event(other, 1.0)
    finally:
        await own.close()
        await other.close()


async def test_sharp_sentiment_drop_raises_an_alert(replicas: tuple[str, str]) -> None:
    a, b = replicas
    ws = await watch(a, "cust-mood", "acme")
    try:
        await analyse(b, "acme", "cust-mood", "Fantastic onboarding, the team loves it!")
        await analyse(a, "acme", "cust-mood", "This is terrible. We are cancelling today, unacceptable.")
        kinds = [(await next_event(ws, 2.0))["type"] for _ in range(3)]
        assert kinds == ["insight", "insight", "alert"]
    finally:
        await ws.close()


@pytest.mark.parametrize("how", ["query", "resume_message", "auth_message"])
async def test_reconnect_replays_exactly_the_missed_events_in_order(replicas: tuple[str, str], how: str) -> None:
    a, b = replicas
    customer = f"cust-resume-{how}"
    ws = await watch(a, customer, "acme")
    await analyse(b, "acme", customer, "First message.")
    last_seen = (await next_event(ws, 2.0))["id"]
    await ws.close()
    for n in range(3):
        await analyse(b, "acme", customer, f"Please send invoice number {n}.")
    if how == "query":
        ws = await watch(b, customer, "acme", last_event_id=last_seen)
    elif how == "resume_message":
        ws = await watch(b, customer, "acme")
        await ws.send(json.dumps({"type": "resume", "last_event_id": last_seen}))
    else:
        ws = await connect(ws_url(b, f"/ws/ai/insights/{customer}"))
        await ws.send(json.dumps({"type": "auth", "token": token("acme"), "last_event_id": last_seen}))
    try:
        replayed = [await next_event(ws, 2.0) for _ in range(3)]
        # The local summary quotes each message's ask: it says which message an event is.
        assert [e["data"]["summary"].split('"')[1] for e in replayed] == [
            f"Please send invoice number {n}." for n in range(3)]
        ids = [e["id"] for e in replayed]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
        with pytest.raises(TimeoutError):
            await next_event(ws, 0.5)  # nothing twice
    finally:
        await ws.close()


def test_sse_feed_resumes_with_last_event_id(replicas: tuple[str, str]) -> None:
    a, b = replicas
    customer = "cust-sse"
    headers = {"Authorization": f"Bearer {token('acme')}"}
    asyncio.run(analyse(b, "acme", customer, "Initial note."))
    asyncio.run(analyse(b, "acme", customer, "Second note."))
    with httpx.Client(base_url=a, headers=headers, timeout=10) as http:
        first_id = None
        with http.stream("GET", f"/api/v1/ai/stream/insights/{customer}",
                         headers={"Last-Event-ID": "0-0"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = []
            for line in response.iter_lines():
                if line.startswith("id: "):
                    events.append(line[4:])
                if len(events) == 2:
                    break
        first_id = events[0]
        with http.stream("GET", f"/api/v1/ai/stream/insights/{customer}",
                         headers={"Last-Event-ID": first_id}) as response:
            for line in response.iter_lines():
                if line.startswith("id: "):
                    assert line[4:] == events[1]
                    break


async def test_an_sse_feed_resumed_from_an_id_ahead_of_the_channel_still_gets_live_events(
    replicas: tuple[str, str]
) -> None:
    """A Last-Event-ID no event of the channel will pass (made up, another system's)
    replays nothing; it must not silence the feed for good."""
    a, b = replicas
    customer = "cust-sse-ahead"
    async with httpx.AsyncClient(base_url=a, timeout=30, headers={"Authorization": f"Bearer {token('acme')}"}) as http:
        async with http.stream("GET", f"/api/v1/ai/stream/insights/{customer}",
                               headers={"Last-Event-ID": "18446744073709551615-0"}) as response:
            assert response.status_code == 200

            async def first_insight() -> None:
                async for line in response.aiter_lines():
                    if line == "event: insight":
                        return

            reading = asyncio.ensure_future(first_insight())
            try:
                for n in range(10):  # the feed subscribes once its body starts: publish until one arrives
                    await analyse(b, "acme", customer, f"Any update on order {n}?")
                    done, _ = await asyncio.wait({reading}, timeout=1.0)
                    if done:
                        break
                assert reading.done(), "no live event reached the feed"
                reading.result()
            finally:
                reading.cancel()


async def test_websocket_auth_failures_close_with_4401_and_4403(replicas: tuple[str, str]) -> None:
    a, _ = replicas
    async with connect(ws_url(a, "/ws/ai/scoring")) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "forged"}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    async with connect(ws_url(a, "/ws/ai/scoring"),
                       additional_headers={"Authorization": f"Bearer {token('acme', roles=())}"}) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_lead_scores_reach_the_tenants_scoring_channel(replicas: tuple[str, str]) -> None:
    a, b = replicas
    ws = await connect(ws_url(a, "/ws/ai/scoring"))
    await ws.send(json.dumps({"type": "auth", "token": token("acme")}))
    assert json.loads(await ws.recv())["type"] == "ready"
    try:
        async with httpx.AsyncClient(base_url=b, timeout=30,
                                     headers={"Authorization": f"Bearer {token('acme')}"}) as http:
            response = await http.post(f"{LEAD_SCORING_PATH}/invoke", json={"input": {"lead_id": "L-77"}})
            assert response.status_code == 200
        event = await next_event(ws, 2.0)
        assert event["type"] == "score" and event["data"]["lead_id"] == "L-77"
    finally:
        await ws.close()
