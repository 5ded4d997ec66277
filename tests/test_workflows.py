"""Background runs (#16) on one service, over real HTTP and WebSocket, on SQLite and on
a real PostgreSQL: start, watch, leave and rejoin by event id, cancel, idempotency,
per-tenant limits, bad input, cross-tenant refusal, listing, erasure.

Slow runs are insights-chat runs answered by the fake OpenAI server with a delay per
token, so a run is still going while the test leaves, rejoins or cancels it.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import ExitStack, contextmanager
import sqlite3
import time
from pathlib import Path
from datetime import UTC, datetime, timedelta
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, update

from app.core.auth import TokenVerifier
from app.core.config import Settings
from app.realtime.events import workflow_channel
from app.server import create_app
from app.store.database import create_engine, service_processes, workflow_runs
from app.store.database import database_url as sqlalchemy_url
from tests.conftest import make_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.feeds import close_of
from tests.support.live_server import live_server
from tests.support.workflows import SLOW_REPLY, WORKFLOWS, follow_sse, follow_ws, merged, start, wait_for_status

MAX_ACTIVE = 3
ANALYSIS = {"customer_id": "wf-cust", "channel": "email",
            "text": "Third outage this week. If it is not fixed by Friday we will cancel the contract."}
QUESTION = {"customer_id": "wf-cust", "question": "What did we promise them?"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, fake_openai: tuple[FakeOpenAI, str],
             database_url: str | None) -> Settings:
    _, openai_url = fake_openai
    return make_settings(
        tmp_path_factory.mktemp("workflows"), database_url=database_url,
        llm_providers="openai,local", openai_base_url=openai_url, openai_api_key="sk-test", openai_model="fake-gpt",
        llm_max_retries=1, llm_first_token_timeout_s=5.0, llm_idle_timeout_s=5.0,
        workflow_max_active_per_tenant=MAX_ACTIVE, workflow_sweep_s=0.1,
    )


@pytest.fixture(scope="module")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="module")
def url(app: FastAPI) -> Iterator[str]:
    with live_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def mint(settings: Settings) -> Callable[..., str]:
    verifier = TokenVerifier(settings)
    return lambda tenant="acme", roles=("rep",), user="alice": verifier.mint(
        tenant_id=tenant, user_id=user, roles=roles, ttl_s=600)


@pytest.fixture
def http(url: str, mint: Callable[..., str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint()}"}, timeout=30) as client:
        yield client


@pytest.fixture
def slow(openai_provider: FakeOpenAI) -> FakeOpenAI:
    """Chat answers of 30 tokens, 0.1 s apart: a run of about three seconds."""
    openai_provider.reply, openai_provider.token_delay_s = SLOW_REPLY, 0.1
    return openai_provider


def test_a_run_streams_the_chains_chunks_and_keeps_its_output(http: httpx.Client) -> None:
    run = start(http, "realtime/interactions", ANALYSIS)
    assert run["status"] == "queued" and run["chain"] == "realtime/interactions" and run["output"] is None
    assert run["input"]["text"] == ANALYSIS["text"], "the input as the chain's schema read it"
    events = follow_sse(http, run["id"])
    assert [e["type"] for e in events[:2]] == ["status", "status"]
    assert [e["data"]["status"] for e in events[:2]] == ["queued", "running"]
    assert events[-1]["type"] == "end" and events[-1]["data"]["status"] == "succeeded"
    stored = http.get(f"{WORKFLOWS}/{run['id']}").json()
    assert stored["status"] == "succeeded" and stored["run_ms"] is not None and stored["error"] is None
    assert merged(events) == stored["output"] == events[-1]["data"]["output"]
    assert stored["output"]["intent"] == "cancellation_risk" and stored["output"]["summary"]
    # The same chunks as the chain's own /stream: a provisional local analysis first.
    chunks = [e["data"]["chunk"] for e in events if e["type"] == "data"]
    assert chunks[0]["provisional"] is True and chunks[-1].get("provisional") is not True
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == len(ids)
    # Every event is on the tenant's and customer's record like any push message.
    assert {(e["tenant_id"], e.get("customer_id")) for e in events} == {("acme", "wf-cust")}


def test_leaving_does_not_cancel_and_a_rejoin_gets_the_rest_once_in_order(
    http: httpx.Client, url: str, mint: Callable[..., str], slow: FakeOpenAI
) -> None:
    run = start(http, "insights/chat", QUESTION)
    first = follow_sse(http, run["id"], leave_after=4)  # queued, running, two chunks
    assert len(first) == 4 and first[-1]["type"] == "data"
    assert http.get(f"{WORKFLOWS}/{run['id']}").json()["status"] == "running", "nobody watching; still running"
    rest = asyncio.run(follow_ws(url, mint(), run["id"], last_event_id=first[-1]["id"]))
    assert rest[-1]["type"] == "end" and rest[-1]["data"]["status"] == "succeeded"
    reference = follow_sse(http, run["id"])  # the whole log, replayed from the start
    assert first + rest == reference
    assert slow.streams_abandoned == 0, "the provider's stream ran to its end"
    answer = merged(reference)
    assert answer["answer"] == http.get(f"{WORKFLOWS}/{run['id']}").json()["output"]["answer"]
    assert "word29" in answer["answer"]


def test_a_rejoin_after_the_end_gets_the_end_and_the_feed_closes(
    http: httpx.Client, url: str, mint: Callable[..., str]
) -> None:
    run = start(http, "scoring/leads", {"lead_id": "wf-lead", "job_title": "CMO", "demo_requested": True})
    everything = follow_sse(http, run["id"])
    assert everything[-1]["data"]["status"] == "succeeded"
    assert 0 <= everything[-1]["data"]["output"]["score"] <= 100
    last_chunk = [e for e in everything if e["type"] == "data"][-1]
    assert follow_sse(http, run["id"], last_event_id=last_chunk["id"]) == [everything[-1]]
    after_end = http.get(f"/api/v1/ai/stream/workflows/{run['id']}", headers={"Last-Event-ID": everything[-1]["id"]})
    assert after_end.status_code == 204, "a browser EventSource stops reconnecting"
    assert asyncio.run(follow_ws(url, mint(), run["id"], last_event_id=everything[-1]["id"])) == [], \
        "nothing after the end: the socket closes after `ready`"


def test_delete_cancels_a_running_run(http: httpx.Client, slow: FakeOpenAI) -> None:
    run = start(http, "insights/chat", QUESTION)
    wait_for_status(http, run["id"], {"running"})
    follow_sse(http, run["id"], leave_after=3)  # a chunk arrived: the provider is streaming
    answer = http.delete(f"{WORKFLOWS}/{run['id']}")
    # 200 once final, 202 if still stopping after the second it waits (no timing asserted here).
    assert (answer.status_code, answer.json()["status"]) in ((200, "cancelled"), (202, "running"))
    cancelled = wait_for_status(http, run["id"], {"cancelled", "succeeded"})
    assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
    events = follow_sse(http, run["id"])
    assert events[-1]["type"] == "end" and events[-1]["data"]["status"] == "cancelled"
    assert "word29" not in (merged(events) or {}).get("answer", "")
    deadline = time.monotonic() + 10
    while slow.streams_abandoned == 0:  # the provider's stream was closed, not left running
        assert time.monotonic() < deadline, "the provider stream was not abandoned"
        time.sleep(0.05)
    again = http.delete(f"{WORKFLOWS}/{run['id']}")
    assert again.status_code == 200 and again.json()["status"] == "cancelled", "a final run is left as it is"


def test_idempotency_key_returns_the_same_run(http: httpx.Client, url: str, mint: Callable[..., str]) -> None:
    body = {"chain": "realtime/interactions", "input": ANALYSIS}
    key = {"Idempotency-Key": "order-7-analysis"}
    first = http.post(WORKFLOWS, json=body, headers=key)
    second = http.post(WORKFLOWS, json=body, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert second.headers["Location"] == f"{WORKFLOWS}/{first.json()['id']}"
    other_body = http.post(WORKFLOWS, json={**body, "input": {**ANALYSIS, "text": "Something else."}}, headers=key)
    assert other_body.status_code == 422
    assert other_body.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    defaults_spelled_out = {**body, "input": {**ANALYSIS, "customer_tier": "standard", "time_sensitive": False}}
    assert http.post(WORKFLOWS, json=defaults_spelled_out, headers=key).json()["id"] == first.json()["id"], \
        "the same request as the chain reads it"
    for tenant, user in (("globex", "alice"), ("acme", "bob")):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint(tenant=tenant, user=user)}"}) as other:
            theirs = other.post(WORKFLOWS, json=body, headers=key)
        assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"], "keys are each user's own"
    wait_for_status(http, theirs.json()["id"], {"succeeded"})  # bob's: acme's runs are readable by alice
    wait_for_status(http, first.json()["id"], {"succeeded"})


def test_too_many_active_runs_answer_429_with_retry_after(http: httpx.Client, slow: FakeOpenAI) -> None:
    runs = [start(http, "insights/chat", QUESTION) for _ in range(MAX_ACTIVE)]
    refused = http.post(WORKFLOWS, json={"chain": "insights/chat", "input": QUESTION})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "at most 3" in refused.json()["detail"]
    listed = http.get(WORKFLOWS, params={"limit": 100}).json()["runs"]
    assert {r["id"] for r in runs} <= {r["id"] for r in listed}, "the refused POST created nothing"
    for run in runs:
        assert http.delete(f"{WORKFLOWS}/{run['id']}").status_code in (200, 202)
        assert wait_for_status(http, run["id"], {"cancelled", "succeeded"})["status"] == "cancelled"
    again = start(http, "insights/chat", QUESTION)
    assert again["status"] == "queued", "room again once they ended"
    http.delete(f"{WORKFLOWS}/{again['id']}")


def test_one_tenants_flood_waits_behind_its_own_share_of_the_slots(
    tmp_path: Path, settings: Settings, slow: FakeOpenAI
) -> None:
    """Two slots, at most one per tenant: a tenant's three slow runs take one slot and
    queue behind it, and another tenant's run takes the other at once. With one FIFO of
    slots it waited behind the flood (a security review: 43 s behind 66 runs)."""
    fair = settings.model_copy(update={"data_dir": tmp_path, "workflow_max_concurrency": 2,
                                       "workflow_max_running_per_tenant": 1})
    verifier = TokenVerifier(fair)
    tenants = [f"fair-{random.randrange(16**8):08x}-{n}" for n in (1, 2)]
    with live_server(create_app(fair)) as base, ExitStack() as clients:
        flooder, other = (clients.enter_context(httpx.Client(base_url=base, timeout=30, headers={
            "Authorization": f"Bearer {verifier.mint(tenant_id=t, user_id='u', roles=('rep',), ttl_s=600)}"}))
            for t in tenants)
        flood = [start(flooder, "insights/chat", QUESTION) for _ in range(3)]
        wait_for_status(flooder, flood[0]["id"], {"running"})
        late = start(other, "insights/chat", QUESTION)
        assert wait_for_status(other, late["id"], {"running", "succeeded"})["status"] == "running"
        statuses = [flooder.get(f"{WORKFLOWS}/{run['id']}").json()["status"] for run in flood]
        assert statuses.count("running") == 1 and statuses.count("queued") == 2, statuses
        for client, run in [(flooder, r) for r in flood] + [(other, late)]:
            client.delete(f"{WORKFLOWS}/{run['id']}")


@pytest.mark.parametrize(("body", "loc"), [
    ({"chain": "realtime/nothing", "input": ANALYSIS}, ["body", "chain"]),
    ({"chain": "realtime/interactions", "input": {"customer_id": "x", "channel": "email"}}, ["body", "input", "text"]),
    ({"chain": "realtime/interactions", "input": {**ANALYSIS, "channel": "fax"}}, ["body", "input", "channel"]),
    ({"chain": "realtime/interactions"}, ["body", "input"]),
    ({"chain": "realtime/interactions", "input": ANALYSIS, "tenant_id": "globex"}, ["body", "tenant_id"]),
])
def test_bad_requests_answer_422_and_start_nothing(http: httpx.Client, body: dict, loc: list[str]) -> None:
    before = len(http.get(WORKFLOWS, params={"limit": 100}).json()["runs"])
    response = http.post(WORKFLOWS, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert len(http.get(WORKFLOWS, params={"limit": 100}).json()["runs"]) == before


def test_bad_ids_and_cursors_answer_4xx(http: httpx.Client) -> None:
    assert http.get(f"{WORKFLOWS}/not-a-run-id").status_code == 422
    assert http.get(f"{WORKFLOWS}/00000000-0000-4000-8000-000000000000").status_code == 404
    assert http.delete(f"{WORKFLOWS}/00000000-0000-4000-8000-000000000000").status_code == 404
    assert http.get(WORKFLOWS, params={"cursor": "garbage"}).status_code == 422
    assert http.get(WORKFLOWS, params={"cursor": f"99999999999999999999.{'0' * 36}"}).status_code == 422
    assert http.get(WORKFLOWS, params={"status": "sleeping"}).status_code == 422
    assert http.post(WORKFLOWS, json=None).status_code == 422
    assert http.post(WORKFLOWS, json={"chain": "insights/chat", "input": QUESTION},
                     headers={"Idempotency-Key": "x" * 300}).status_code == 422


def test_roles_of_the_chain_apply(url: str, mint: Callable[..., str]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint(roles=('viewer',))}"}) as viewer:
        refused = viewer.post(WORKFLOWS, json={"chain": "realtime/interactions", "input": ANALYSIS})
        assert refused.status_code == 403, "viewers may not analyse interactions, in the background neither"
        allowed = viewer.post(WORKFLOWS, json={"chain": "insights/chat", "input": QUESTION})
        assert allowed.status_code == 202, "but may ask the insights chat"
        wait_for_status(viewer, allowed.json()["id"], {"succeeded"})
    with httpx.Client(base_url=url) as anonymous:
        assert anonymous.post(WORKFLOWS, json={"chain": "insights/chat", "input": QUESTION}).status_code == 401
        assert anonymous.get(WORKFLOWS).status_code == 401


def test_another_tenants_run_is_refused_everywhere_and_logged(
    http: httpx.Client, url: str, mint: Callable[..., str]
) -> None:
    run = start(http, "realtime/interactions", ANALYSIS)
    wait_for_status(http, run["id"], {"succeeded"})
    intruder_token = mint(tenant="globex", user="mallory")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {intruder_token}"}, timeout=10) as intruder:
        assert intruder.get(f"{WORKFLOWS}/{run['id']}").status_code == 404
        assert intruder.delete(f"{WORKFLOWS}/{run['id']}").status_code == 404
        assert intruder.get(f"/api/v1/ai/stream/workflows/{run['id']}").status_code == 404
        assert run["id"] not in {r["id"] for r in intruder.get(WORKFLOWS).json()["runs"]}

    code, _ = asyncio.run(close_of(url, intruder_token, f"/ws/ai/workflows/{run['id']}"))
    assert code == 4403
    assert http.get(f"{WORKFLOWS}/{run['id']}").json()["status"] == "succeeded", "untouched"
    operator = mint(tenant="operator", roles=("operator",))  # tenant-less: see app.core.cross_tenant
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator}"}) as admin:
        deadline = time.monotonic() + 10
        while True:
            events = admin.get("/api/v1/ai/security/events/all",
                               params={"kind": "cross_tenant_resource", "tenant_id": "-"}).json()
            attempts = [e for e in events if e["detail"].get("resource") == "workflow_run"
                        and e["detail"].get("id") == run["id"] and e["detail"].get("tenant_id") == "globex"]
            if len(attempts) >= 4:  # GET, DELETE, SSE, WebSocket
                break
            assert time.monotonic() < deadline, attempts
            time.sleep(0.1)
    assert {e["user_id"] for e in attempts} == {"mallory"}


def test_list_is_tenant_scoped_paginated_and_filtered(url: str, mint: Callable[..., str]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint(tenant='lister')}"}) as lister:
        ids = []
        for i in range(5):  # one after the other: at most 3 may be active at once
            ids.append(start(lister, "scoring/leads", {"lead_id": f"lead-{i}", "job_title": "CEO"})["id"])
            wait_for_status(lister, ids[-1], {"succeeded"})
        seen: list[str] = []
        cursor = None
        while True:
            page = lister.get(WORKFLOWS, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            assert len(page["runs"]) <= 2 and all("output" not in r for r in page["runs"])
            seen += [r["id"] for r in page["runs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids)), "newest first, each once"
        assert len(lister.get(WORKFLOWS, params={"status": "succeeded", "limit": 100}).json()["runs"]) == 5
        assert lister.get(WORKFLOWS, params={"status": "running"}).json()["runs"] == []


def test_erasing_a_customer_erases_their_runs_and_events(url: str, mint: Callable[..., str]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint(tenant='erasing', roles=('admin',))}"}) as admin:
        run = start(admin, "realtime/interactions", {**ANALYSIS, "customer_id": "gone"})
        kept = start(admin, "realtime/interactions", {**ANALYSIS, "customer_id": "stays"})
        for run_id in (run["id"], kept["id"]):
            wait_for_status(admin, run_id, {"succeeded"})
        export = admin.get("/api/v1/ai/privacy/customers/gone/export").json()
        assert [r["input"]["text"] for r in export["workflow_runs"]] == [ANALYSIS["text"]]
        erased = admin.delete("/api/v1/ai/privacy/customers/gone").json()["erased"]
        assert erased["workflow_runs"] == 1 and erased["workflow_event_channels"] == 1
        assert admin.get(f"{WORKFLOWS}/{run['id']}").status_code == 404
        assert admin.get(f"{WORKFLOWS}/{kept['id']}").json()["status"] == "succeeded"


def test_erasing_a_customer_mid_run_stops_it_and_keeps_none_of_its_events(
    app: FastAPI, url: str, mint: Callable[..., str], slow: FakeOpenAI
) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint(tenant='erasing', roles=('admin',))}"}) as admin:
        run = start(admin, "insights/chat", {**QUESTION, "customer_id": "gone-mid-run"})
        follow_sse(admin, run["id"], leave_after=3)  # streaming
        assert admin.delete("/api/v1/ai/privacy/customers/gone-mid-run").json()["erased"]["workflow_runs"] == 1
        bus = app.state.services.bus
        deadline = time.monotonic() + 10
        while slow.streams_abandoned == 0 or asyncio.run(bus.history(workflow_channel("erasing", run["id"]), "0-0")):
            assert time.monotonic() < deadline, "the run went on publishing the erased customer's answer"
            time.sleep(0.05)
        assert admin.get(f"{WORKFLOWS}/{run['id']}").status_code == 404
        assert admin.get("/api/v1/ai/privacy/customers/gone-mid-run/export").json()["workflow_runs"] == []


def test_cancels_racing_the_end_leave_exactly_one_end_per_run(http: httpx.Client) -> None:
    rng = random.Random(16)
    runs = []
    for _ in range(5):  # batches within the tenant's limit of 3 active runs
        batch = [start(http, "realtime/interactions", ANALYSIS) for _ in range(MAX_ACTIVE)]
        for run in batch:
            time.sleep(rng.uniform(0.0, 0.1))  # some still running, some finishing, some done
            assert http.delete(f"{WORKFLOWS}/{run['id']}").status_code in (200, 202)
        for run in batch:
            wait_for_status(http, run["id"], {"succeeded", "cancelled"})
        runs += batch
    for run in runs:
        events = follow_sse(http, run["id"])  # ends only at an `end`: a lost one would hang here
        ends = [e for e in events if e["type"] == "end"]
        stored = http.get(f"{WORKFLOWS}/{run['id']}").json()
        assert len(ends) == 1 and ends[0]["data"]["status"] == stored["status"]


def test_a_replica_stops_a_run_it_no_longer_holds(settings: Settings, http: httpx.Client, slow: FakeOpenAI) -> None:
    """As when another replica took the run over after this one's heartbeat came late."""
    run = start(http, "insights/chat", QUESTION)
    follow_sse(http, run["id"], leave_after=3)  # streaming

    async def hand_over() -> None:
        engine = create_engine(sqlalchemy_url(settings.database_url, settings.sqlite_path))
        now = datetime.now(UTC)
        async with engine.begin() as connection:  # a live replica (it beats), now holding the run
            await connection.execute(insert(service_processes).values(
                process_id="another-replica", host="elsewhere", started_at=now, last_seen=now + timedelta(hours=1)))
            await connection.execute(update(workflow_runs).where(workflow_runs.c.run_id == run["id"])
                                     .values(process_id="another-replica"))
        await engine.dispose()

    asyncio.run(hand_over())
    deadline = time.monotonic() + 10
    while slow.streams_abandoned == 0:
        assert time.monotonic() < deadline, "this replica went on running a run it no longer holds"
        time.sleep(0.05)
    stored = http.get(f"{WORKFLOWS}/{run['id']}").json()
    assert stored["status"] == "running" and stored["finished_at"] is None, "left to the replica that holds it"
    assert all(e["type"] != "end" for e in follow_sse(http, run["id"], leave_after=100_000, timeout_s=1.0))


def test_a_run_whose_end_cannot_be_written_for_a_while_still_ends(settings: Settings, http: httpx.Client) -> None:
    """SQLite: every write waits its 5 s busy timeout, then fails, until the lock goes.
    PostgreSQL: every write to the runs waits for the lock."""
    run = start(http, "realtime/interactions", ANALYSIS)
    with _database_locked(settings):
        time.sleep(7)
    final = wait_for_status(http, run["id"], {"succeeded", "failed", "interrupted"}, timeout_s=60)
    events = follow_sse(http, run["id"])
    assert [e["data"]["status"] for e in events if e["type"] == "end"] == [final["status"]]


@contextmanager
def _database_locked(settings: Settings) -> Iterator[None]:
    if settings.database_url is None:
        writer = sqlite3.connect(settings.sqlite_path, timeout=30)
        writer.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            writer.rollback()
            writer.close()
    else:
        with psycopg.connect(settings.database_url) as locker:
            locker.execute("LOCK TABLE workflow_runs IN ACCESS EXCLUSIVE MODE")
            yield
            locker.rollback()


def test_reading_watching_and_cancelling_follow_roles(url: str, mint: Callable[..., str]) -> None:
    def as_(user: str, *roles: str) -> httpx.Client:
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint(tenant='roles', user=user, roles=roles)}"})

    with as_("alice", "rep") as alice, as_("bob", "rep") as bob, as_("vera", "viewer") as viewer, \
            as_("mia", "manager") as manager:
        analysis = start(alice, "realtime/interactions", {**ANALYSIS, "tenant_id": "globex"})
        assert viewer.get(f"{WORKFLOWS}/{analysis['id']}").status_code == 403, "viewers may not run analyses"
        assert viewer.get(f"/api/v1/ai/stream/workflows/{analysis['id']}").status_code == 403
        assert analysis["id"] not in {r["id"] for r in viewer.get(WORKFLOWS).json()["runs"]}
        assert analysis["id"] in {r["id"] for r in bob.get(WORKFLOWS).json()["runs"]}, "the tenant's runs"
        wait_for_status(alice, analysis["id"], {"succeeded"})
        chat = start(alice, "insights/chat", QUESTION)
        assert viewer.get(f"{WORKFLOWS}/{chat['id']}").status_code == 200, "viewers may ask the chat"
        assert bob.delete(f"{WORKFLOWS}/{chat['id']}").status_code == 403, "not bob's run"
        assert manager.delete(f"{WORKFLOWS}/{chat['id']}").status_code in (200, 202)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mint(tenant='roles', roles=('admin',))}"}) as admin:
        deadline = time.monotonic() + 10
        while not any(e["detail"].get("overrides") for e in
                      admin.get("/api/v1/ai/security/events", params={"kind": "identity_override"}).json()):
            assert time.monotonic() < deadline, "a tenant named in a background run's input is not recorded"
            time.sleep(0.1)


def test_a_late_heartbeat_does_not_make_a_replica_interrupt_its_own_runs(
    app: FastAPI, settings: Settings, http: httpx.Client, slow: FakeOpenAI
) -> None:
    """As after a cold start (a minute of model training before the first beat)."""
    run = start(http, "insights/chat", QUESTION)
    follow_sse(http, run["id"], leave_after=3)

    async def beat_long_ago() -> None:
        engine = create_engine(sqlalchemy_url(settings.database_url, settings.sqlite_path))
        async with engine.begin() as connection:
            await connection.execute(
                update(service_processes).where(service_processes.c.process_id == app.state.services.liveness.process_id)
                .values(last_seen=datetime.now(UTC) - timedelta(days=1)))
        await engine.dispose()

    asyncio.run(beat_long_ago())
    assert wait_for_status(http, run["id"], {"succeeded", "interrupted", "failed"})["status"] == "succeeded"
