"""Model health across replicas: breaker state lives in Redis, so failures seen by one
replica cut the provider off for all, and the transition is alerted exactly once.

Two real `uvicorn app.server:app` processes share a real Redis and the fake OpenAI
server; admins watch `WS /ws/ai/admin` on both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.server import create_app
from tests.conftest import TEST_DATA_KEY, TEST_SECRET
from tests.support.fake_openai import FakeOpenAI
from tests.support.live_server import live_server
from tests.support.replicas import replica
from tests.support.servers import RedisServer, redis_server
from tests.test_model_health import MIN_CALLS, admin_feed, analyse, health_settings, next_alert, token, trip


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: tuple[FakeOpenAI, str]
) -> Iterator[tuple[str, str]]:
    base = tmp_path_factory.mktemp("health-replicas")
    with redis_server(base / "redis") as redis_url:
        env = {
            "AUTH_JWT_SECRET": TEST_SECRET, "DATA_ENCRYPTION_KEY": TEST_DATA_KEY, "APP_ENV": "test",
            "REDIS_URL": redis_url,
            "LLM_PROVIDERS": "openai,local", "OPENAI_BASE_URL": fake_openai[1], "OPENAI_API_KEY": "sk-test",
            "OPENAI_MODEL": "fake-gpt", "LLM_MAX_RETRIES": "0", "LLM_FIRST_TOKEN_TIMEOUT_S": "2",
            "LLM_BREAKER_MIN_CALLS": str(MIN_CALLS), "LLM_BREAKER_COOLDOWN_S": "600",
        }
        with replica({**env, "DATA_DIR": str(base / "a")}, base / "a.log") as a, \
                replica({**env, "DATA_DIR": str(base / "b")}, base / "b.log") as b:
            yield a, b


async def alerts_replayed(url: str) -> list[dict[str, Any]]:
    """Everything the admin channel holds, replayed from the start."""
    ws = await admin_feed(url, "acme", "?last_event_id=0-0")
    events = []
    try:
        while (message := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] != "ready":
            events.append(message)
    finally:
        await ws.close()
    return events


async def test_failures_on_one_replica_cut_the_provider_off_for_the_other(
    replicas: tuple[str, str], openai_provider: FakeOpenAI
) -> None:
    a, b = replicas
    admin_on_a, admin_on_b = await admin_feed(a, "acme"), await admin_feed(b, "globex")
    try:
        await trip(a, openai_provider)  # every failure seen by replica A
        opened = await next_alert(admin_on_b)
        assert opened == await next_alert(admin_on_a)
    finally:
        await admin_on_a.close()
        await admin_on_b.close()
    assert opened["data"]["kind"] == "provider_circuit_opened" and opened["data"]["provider"] == "openai"

    openai_provider.mode = "ok"
    for _ in range(2):
        output = await analyse(b)
        assert output["degraded_reason"] == "providers_unavailable"
    assert len(openai_provider.requests) == MIN_CALLS, "replica B skips the provider replica A found failing"

    assert [e["id"] for e in await alerts_replayed(b) if e["type"] == "alert"] == [opened["id"]], \
        "one alert for the transition, cluster-wide"
    async with httpx.AsyncClient(base_url=b, timeout=30) as http:
        health = await http.get("/api/v1/ai/providers/health",
                                headers={"Authorization": f"Bearer {token('globex', ('admin',))}"})
    openai = next(p for p in health.json()["providers"] if p["provider"] == "openai")
    assert openai["state"] == "open"


async def test_calls_never_fail_because_redis_is_down(
    tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI
) -> None:
    """Without Redis each process keeps its own breakers: calls are served, and a failing
    provider is still cut off (by this process alone)."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    settings: Settings = health_settings(tmp_path, fake_openai[1], redis_url=redis.url, llm_breaker_cooldown_s=600)
    try:
        with live_server(create_app(settings)) as url:
            assert (await analyse(url))["degraded"] is False, "healthy, through the Redis breakers"
            openai_provider.requests.clear()
            redis.stop()
            await trip(url, openai_provider)
            output = await analyse(url)
            assert output["degraded_reason"] == "providers_unavailable"
            assert len(openai_provider.requests) == MIN_CALLS, "this process's own breaker opened"
    finally:
        redis.stop()


async def test_with_redis_a_recovered_provider_is_probed_once_and_restored(
    tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI
) -> None:
    """The half-open trial and the close, decided by the Redis store."""
    with redis_server(tmp_path / "redis") as redis_url, \
            live_server(create_app(health_settings(tmp_path, fake_openai[1], redis_url=redis_url,
                                                   llm_breaker_cooldown_s=1.0))) as url:
        admin = await admin_feed(url, "acme")
        try:
            await trip(url, openai_provider)
            assert (await next_alert(admin))["data"]["kind"] == "provider_circuit_opened"
            openai_provider.mode = "ok"
            for _ in range(100):  # calls keep coming; after the cool-down one is the trial call
                output = await analyse(url)
                if len(openai_provider.requests) > MIN_CALLS:
                    break
                await asyncio.sleep(0.2)
            assert len(openai_provider.requests) == MIN_CALLS + 1 and output["degraded"] is False
            closed = await next_alert(admin)
        finally:
            await admin.close()
        assert closed["data"]["kind"] == "provider_circuit_closed" and closed["data"]["provider"] == "openai"
        assert (await analyse(url))["degraded"] is False
        assert len(openai_provider.requests) == MIN_CALLS + 2, "restored for every call"
