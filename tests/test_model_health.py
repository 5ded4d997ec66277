"""Model health (#14 item 5): a provider failing across calls is cut off and skipped,
probed after its cool-down and restored, and administrators are alerted each way.

Everything goes through the service as clients use it: interaction analyses over HTTP,
the real langchain-openai client against the fake OpenAI server, admins on
`WS /ws/ai/admin`, a real webhook receiver, and the durable ops record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.api.chains import INTERACTIONS_PATH
from app.core.auth import TokenVerifier
from app.server import create_app
from tests.conftest import TEST_SECRET, make_settings
from tests.support.fake_openai import ANALYSIS_REPLY, FakeOpenAI
from tests.support.live_server import live_server
from tests.support.payloads import INTERACTION
from tests.support.webhook_receiver import WebhookReceiver

MIN_CALLS = 4
WEBHOOK_SECRET = "webhook-secret-for-tests"
LLM_SUMMARY = json.loads(ANALYSIS_REPLY)["summary"]
VERIFIER = TokenVerifier(make_settings(Path("/nonexistent"), auth_jwt_secret=TEST_SECRET))
WAIT_S = 20.0  # an upper bound for waits that normally end in milliseconds


def token(tenant: str, roles: tuple[str, ...]) -> str:
    return VERIFIER.mint(tenant_id=tenant, user_id=f"{tenant}-user", roles=roles)


def health_settings(data_dir: Path, openai_url: str, **extra: Any) -> Any:
    return make_settings(
        data_dir, llm_providers="openai,local", openai_base_url=openai_url, openai_api_key="sk-test",
        openai_model="fake-gpt", llm_max_retries=0, llm_first_token_timeout_s=2.0, llm_idle_timeout_s=2.0,
        llm_breaker_min_calls=MIN_CALLS, **extra,
    )


def ws_url(http_url: str, path: str) -> str:
    return http_url.replace("http://", "ws://") + path


async def admin_feed(url: str, tenant: str, query: str = "") -> ClientConnection:
    """An admin watching the admin channel, past its `ready` (replay, if asked, comes first)."""
    ws = await connect(ws_url(url, f"/ws/ai/admin{query}"),
                       additional_headers={"Authorization": f"Bearer {token(tenant, ('admin',))}"})
    if not query:
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["type"] == "ready"
    return ws


async def next_alert(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        if message["type"] not in ("heartbeat", "ready"):
            return message


async def analyse(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {token('acme', ('rep',))}"}) as http:
        response = await http.post(f"{INTERACTIONS_PATH}/invoke", json={"input": INTERACTION})
    assert response.status_code == 200, response.text
    return response.json()["output"]


async def trip(url: str, fake: FakeOpenAI) -> None:
    """MIN_CALLS failing calls: each fails over to the local analysis, the last opens the breaker."""
    fake.mode = "error_500"
    for _ in range(MIN_CALLS):
        output = await analyse(url)
        assert output["degraded_reason"] == "providers_unavailable"
    assert len(fake.requests) == MIN_CALLS, "one call each (LLM_MAX_RETRIES=0): the breaker was closed"


def ops_records(url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The breaker records, as an operator reads them (oldest first)."""
    events = httpx.get(f"{url}/api/v1/ai/security/events/all", params={"tenant_id": "-"}, timeout=30,
                       headers={"Authorization": f"Bearer {token('operator', ('operator',))}"}).json()
    return [(e["tenant_id"], e["kind"], e["detail"]) for e in reversed(events) if e["kind"].startswith("provider_circuit_")]


async def eventually(check: Any, what: str) -> Any:
    for _ in range(int(WAIT_S / 0.05)):
        if result := check():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def cut_off_service(tmp_path: Path, fake_openai: tuple[FakeOpenAI, str]) -> Iterator[tuple[str, Path]]:
    """A cool-down far longer than the test: once open, the breaker stays open."""
    with live_server(create_app(health_settings(tmp_path, fake_openai[1], llm_breaker_cooldown_s=600))) as url:
        yield url, tmp_path


async def test_a_failing_provider_is_skipped_and_every_tenants_admins_are_alerted(
    cut_off_service: tuple[str, Path], openai_provider: FakeOpenAI
) -> None:
    url, data_dir = cut_off_service
    acme_admin, globex_admin = await admin_feed(url, "acme"), await admin_feed(url, "globex")
    try:
        await trip(url, openai_provider)
        opened = await next_alert(acme_admin)
        assert opened == await next_alert(globex_admin), "provider health concerns every tenant's admins"
    finally:
        await acme_admin.close()
        await globex_admin.close()
    assert opened["type"] == "alert" and opened["tenant_id"] == "-" and opened["id"] and opened["created_at"]
    data = opened["data"]
    assert data["kind"] == "provider_circuit_opened" and data["provider"] == "openai" and data["state"] == "open"
    assert data["window"] == {"calls": MIN_CALLS, "errors": MIN_CALLS, "timeouts": 0, "slow_calls": 0}
    assert "error rate" in data["reason"] and data["retry_at"]

    openai_provider.mode = "ok"  # healthy again, but nobody waits for the cool-down to find out
    for _ in range(2):
        output = await analyse(url)
        assert output["degraded_reason"] == "providers_unavailable", "the local analysis answered at once"
    assert len(openai_provider.requests) == MIN_CALLS, "an open breaker sends the provider nothing"

    # A late admin replays the alert; the ops record and the metrics have it too.
    late = await admin_feed(url, "initech", "?last_event_id=0-0")
    try:
        assert (await next_alert(late))["id"] == opened["id"]
    finally:
        await late.close()
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http, http.stream(
        "GET", "/api/v1/ai/stream/admin",
        headers={"Authorization": f"Bearer {token('umbrella', ('admin',))}", "Last-Event-ID": "0-0"},
    ) as sse:
        assert sse.status_code == 200
        replayed: dict[str, Any] | None = None
        async for line in sse.aiter_lines():
            if line.startswith("data:"):
                replayed = json.loads(line[5:])
                break
    assert replayed is not None and replayed["id"] == opened["id"], "the SSE feed replays it too"
    records = await eventually(lambda: ops_records(url), "the ops record")
    assert [(tenant, kind) for tenant, kind, _ in records] == [("-", "provider_circuit_opened")]
    assert records[0][2]["provider"] == "openai"
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        metrics = (await http.get("/metrics")).text
        health = await http.get("/api/v1/ai/providers/health",
                                headers={"Authorization": f"Bearer {token('globex', ('admin',))}"})
    assert 'ai_provider_circuit_state{provider="openai"} 2.0' in metrics
    assert 'ai_provider_circuit_transitions_total{provider="openai",state="open"}' in metrics
    assert health.status_code == 200, health.text
    providers = {p["provider"]: p for p in health.json()["providers"]}
    assert providers["openai"]["state"] == "open" and providers["openai"]["retry_at"]
    assert providers["local"]["state"] == "closed", "local is the last resort: it never opens"


async def test_non_admins_are_refused_the_admin_feeds(cut_off_service: tuple[str, Path]) -> None:
    url, _ = cut_off_service
    for roles in (("manager", "rep"), ("viewer",)):
        ws = await connect(ws_url(url, "/ws/ai/admin"),
                           additional_headers={"Authorization": f"Bearer {token('acme', roles)}"})
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    ws = await connect(ws_url(url, "/ws/ai/admin"))
    await ws.send(json.dumps({"type": "auth", "token": "not-a-token"}))
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), WAIT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.get("/api/v1/ai/stream/admin",
                               headers={"Authorization": f"Bearer {token('acme', ('manager',))}"})).status_code == 403
        assert (await http.get("/api/v1/ai/stream/admin")).status_code == 401
        assert (await http.get("/api/v1/ai/providers/health",
                               headers={"Authorization": f"Bearer {token('acme', ('rep',))}"})).status_code == 403


@pytest.fixture
def slow_service(tmp_path: Path, fake_openai: tuple[FakeOpenAI, str]) -> Iterator[str]:
    settings = health_settings(tmp_path, fake_openai[1], llm_breaker_cooldown_s=600, llm_breaker_slow_call_s=0.2)
    with live_server(create_app(settings)) as url:
        yield url


async def test_a_provider_slow_to_its_first_token_is_switched_away_from(
    slow_service: str, openai_provider: FakeOpenAI
) -> None:
    """Degraded performance, not only errors: answers that keep coming late open it too."""
    openai_provider.token_delay_s = 0.3  # every token, the first included, comes after 0.3 s > 0.2 s
    openai_provider.json_reply = json.dumps({**json.loads(ANALYSIS_REPLY), "summary": "Churn threat today."})
    admin = await admin_feed(slow_service, "acme")
    try:
        for _ in range(MIN_CALLS):
            assert (await analyse(slow_service))["degraded"] is False, "slow, but it answered"
        opened = await next_alert(admin)
    finally:
        await admin.close()
    assert opened["data"]["kind"] == "provider_circuit_opened"
    assert opened["data"]["window"] == {"calls": MIN_CALLS, "errors": 0, "timeouts": 0, "slow_calls": MIN_CALLS}
    assert "slow first token" in opened["data"]["reason"]
    assert (await analyse(slow_service))["degraded_reason"] == "providers_unavailable", "the backup answered"
    assert len(openai_provider.requests) == MIN_CALLS


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    hook = WebhookReceiver(WEBHOOK_SECRET, fail_first=1)
    with live_server(hook.app()) as url:
        yield hook, f"{url}/alerts"


@pytest.fixture
def recovering_service(
    tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], receiver: tuple[WebhookReceiver, str]
) -> Iterator[str]:
    settings = health_settings(
        tmp_path, fake_openai[1], llm_breaker_cooldown_s=1.0,
        alert_webhook_url=receiver[1], alert_webhook_secret=WEBHOOK_SECRET, alert_webhook_backoff_s=0.05,
    )
    with live_server(create_app(settings)) as url:
        yield url


async def test_a_recovered_provider_is_probed_restored_and_the_webhook_is_told_both_ways(
    recovering_service: str, openai_provider: FakeOpenAI, receiver: tuple[WebhookReceiver, str]
) -> None:
    url, (hook, _) = recovering_service, receiver
    admin = await admin_feed(url, "acme")
    try:
        await trip(url, openai_provider)
        assert (await next_alert(admin))["data"]["kind"] == "provider_circuit_opened"
        openai_provider.mode = "ok"
        # Calls keep coming; once the cool-down has passed one of them is the trial call.
        served: list[dict[str, Any]] = []

        async def call_until_probed() -> bool:
            served.append(await analyse(url))
            return len(openai_provider.requests) > MIN_CALLS

        for _ in range(int(WAIT_S / 0.2)):
            if await call_until_probed():
                break
            await asyncio.sleep(0.2)
        assert len(openai_provider.requests) == MIN_CALLS + 1, "exactly one trial call"
        assert served[-1]["summary"] == LLM_SUMMARY, "the trial call's answer was served"
        closed = await next_alert(admin)
    finally:
        await admin.close()
    assert closed["type"] == "alert" and closed["tenant_id"] == "-"
    assert closed["data"]["kind"] == "provider_circuit_closed" and closed["data"]["provider"] == "openai"
    assert (await analyse(url))["summary"] == LLM_SUMMARY, "restored: the provider serves again"
    assert len(openai_provider.requests) == MIN_CALLS + 2

    await eventually(lambda: len(hook.accepted) == 2, "both alerts delivered to the webhook")
    assert hook.statuses[0] == 500 and hook.rejected == 0, "the first delivery failed, was retried, all were signed"
    assert [a["data"]["kind"] for a in hook.accepted] == ["provider_circuit_opened", "provider_circuit_closed"]
    assert hook.accepted[1]["id"] == closed["id"], "the webhook gets the same message as the admin feed"


def metric_value(text: str, series: str) -> float:
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")), 0.0)


async def test_a_webhook_that_keeps_failing_is_given_up_after_its_attempts(
    tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI
) -> None:
    hook = WebhookReceiver(WEBHOOK_SECRET, fail_first=1_000)
    failed = 'ai_alert_webhook_deliveries_total{result="failed"}'
    with live_server(hook.app()) as hook_url:
        settings = health_settings(
            tmp_path, fake_openai[1], llm_breaker_cooldown_s=600, alert_webhook_url=f"{hook_url}/alerts",
            alert_webhook_secret=WEBHOOK_SECRET, alert_webhook_backoff_s=0.05, alert_webhook_max_attempts=3,
        )
        with live_server(create_app(settings)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                failed_before = metric_value((await http.get("/metrics")).text, failed)
                await trip(url, openai_provider)
                await eventually(lambda: len(hook.statuses) >= 3, "three delivery attempts")

                async def given_up() -> bool:
                    return metric_value((await http.get("/metrics")).text, failed) == failed_before + 1

                for _ in range(int(WAIT_S / 0.1)):
                    if await given_up():
                        break
                    await asyncio.sleep(0.1)
                assert await given_up(), "the lost alert is counted"
    assert hook.statuses == [500, 500, 500] and hook.rejected == 0, "three signed attempts, then no more"
