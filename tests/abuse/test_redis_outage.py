"""Redis under pressure and down: requests degrade, never 500; everything recovers by itself.

Real replicas (uvicorn processes) share a real redis-server that is stopped and started
again on the same port in the middle of the traffic.
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
import redis
from websockets.asyncio.client import ClientConnection, connect

from app.api.chains import INTERACTIONS_PATH, LEAD_SCORING_PATH
from app.core.auth import TokenVerifier
from tests.conftest import TEST_DATA_KEY, TEST_SECRET, make_settings
from tests.support.payloads import LEAD
from tests.support.replicas import replica
from tests.support.servers import RedisServer

VERIFIER = TokenVerifier(make_settings(Path("/nonexistent")))
BASE_ENV = {"AUTH_JWT_SECRET": TEST_SECRET, "DATA_ENCRYPTION_KEY": TEST_DATA_KEY, "APP_ENV": "test", "LLM_PROVIDERS": "local",
            "REDIS_SOCKET_TIMEOUT_S": "0.5", "REDIS_POOL_TIMEOUT_S": "1"}


def auth(tenant: str = "acme", user: str = "u") -> dict[str, str]:
    return {"Authorization": f"Bearer {VERIFIER.mint(tenant_id=tenant, user_id=user, roles=('rep',))}"}


def analysis(customer: str, text: str) -> dict[str, Any]:
    return {"input": {"customer_id": customer, "text": text, "channel": "chat"}}


async def watch(url: str, customer: str) -> ClientConnection:
    ws = await connect(url.replace("http://", "ws://") + f"/ws/ai/insights/{customer}",
                       additional_headers=auth())
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ready"
    return ws


async def next_insight(ws: ClientConnection, timeout_s: float = 5) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        if message["type"] == "insight":
            return message


def wait_ready(url: str, status: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/ready", timeout=5).status_code != status:
        assert time.monotonic() < deadline, f"/ready never answered {status}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, str, str]]:
    base = tmp_path_factory.mktemp("outage")
    server = RedisServer(base / "redis")
    server.start()
    env = {**BASE_ENV, "REDIS_URL": server.url}
    try:
        with replica({**env, "DATA_DIR": str(base / "a")}, base / "a.log") as a, \
                replica({**env, "DATA_DIR": str(base / "b")}, base / "b.log") as b:
            yield server, a, b
    finally:
        server.stop()


async def test_a_redis_outage_degrades_and_recovers_by_itself(outage: tuple[RedisServer, str, str]) -> None:
    server, a, b = outage
    async with httpx.AsyncClient(timeout=30, headers=auth()) as http:
        watcher = await watch(a, "cust-outage")
        assert (await http.post(f"{b}{INTERACTIONS_PATH}/invoke", json=analysis("cust-outage", "Please send the file marked Before."))).status_code == 200
        assert "Before" in (await next_insight(watcher))["data"]["summary"], "through Redis, from B"

        server.stop()
        wait_ready(a, 503)
        for n in range(5):
            response = await http.post(f"{a}{INTERACTIONS_PATH}/invoke", json=analysis("cust-outage", f"Please send the file marked During {n}."))
            assert response.status_code == 200, response.text
            assert f"During {n}" in (await next_insight(watcher))["data"]["summary"], "delivered locally"
        assert (await http.post(f"{a}{LEAD_SCORING_PATH}/invoke", json={"input": LEAD})).status_code == 200
        late = await watch(a, "cust-outage")  # a new socket opens and is served, not closed frameless
        async with http.stream("GET", f"{a}/api/v1/ai/stream/insights/cust-outage",
                               headers={"Last-Event-ID": "1-0"}) as sse:
            assert sse.status_code == 200
        await http.post(f"{a}{INTERACTIONS_PATH}/invoke", json=analysis("cust-outage", "Please send the file marked Seen by the late one."))
        assert "late one" in (await next_insight(late))["data"]["summary"]

        server.start()
        wait_ready(a, 200)
        wait_ready(b, 200)
        deadline = time.monotonic() + 15
        while True:  # B's next publishes reach A's watchers through Redis again
            await http.post(f"{b}{INTERACTIONS_PATH}/invoke", json=analysis("cust-outage", "Please send the file marked After."))
            try:
                insight = await next_insight(watcher, timeout_s=2)
                if "After" in insight["data"]["summary"]:
                    break
            except TimeoutError:
                pass
            assert time.monotonic() < deadline, "push through Redis did not recover"
        keys = redis.Redis.from_url(server.url).keys("crm:ratelimit*")
        assert keys, "rate limits are shared through Redis again"
        await watcher.close()
        await late.close()


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("pool")
    server = RedisServer(base / "redis")
    server.start()
    env = {**BASE_ENV, "REDIS_URL": server.url, "DATA_DIR": str(base / "data"), "REDIS_MAX_CONNECTIONS": "8",
           "RATE_LIMIT_TENANT": "100000/minute", "RATE_LIMIT_USER": "120/minute"}
    try:
        with replica(env, base / "server.log") as url:
            yield url
    finally:
        server.stop()


async def fire(url: str, count: int, headers: dict[str, str]) -> list[int]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=60, headers=headers, limits=limits) as http:
        responses = await asyncio.gather(*(
            http.post(f"{url}{LEAD_SCORING_PATH}/invoke", json={"input": {**LEAD, "lead_id": f"l-{n}"}})
            for n in range(count)
        ))
    return [r.status_code for r in responses]


async def test_many_concurrent_posts_share_one_small_pool_without_500s(small_pool: str) -> None:
    statuses = await fire(small_pool, 110, auth(user="burst-a"))
    assert 500 not in statuses and set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(200) == 110, "110 is inside the user's 120/minute"


async def test_rate_limits_do_not_overshoot_under_concurrency(small_pool: str) -> None:
    statuses = await fire(small_pool, 130, auth(user="burst-b"))
    assert statuses.count(200) == 120 and statuses.count(429) == 10, sorted(statuses)


async def test_in_memory_rate_limits_do_not_overshoot_either(tmp_path: Path) -> None:
    from app.server import create_app
    from tests.support.live_server import live_server

    settings = make_settings(tmp_path, rate_limit_user="120/minute")
    with live_server(create_app(settings)) as url:
        # In memory the windows are the clock's minutes, and a burst straddling one's end
        # may get a couple more through (the counter's approximation, README): this test
        # is about concurrent hits, so its burst stays inside one window.
        if (left_s := 60 - time.time() % 60) < 20:
            await asyncio.sleep(left_s + 0.1)
        statuses = await asyncio.to_thread(lambda: asyncio.run(fire(url, 130, auth(user="burst-c"))))
    assert statuses.count(200) == 120 and statuses.count(429) == 10, sorted(statuses)
