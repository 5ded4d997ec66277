"""Every AI decision is accounted for, durably, per tenant; killed runs read as interrupted."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
import time
from pathlib import Path

import httpx
import pytest

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH, LEAD_SCORING_PATH
from app.core.auth import TokenVerifier
from app.core.pricing import estimate_cost_usd
from app.server import create_app
from chains.local.classifier import MODEL_VERSION
from tests.conftest import TEST_DATA_KEY, TEST_SECRET, make_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.live_server import live_server
from tests.support.payloads import CHAIN_INPUTS, INTERACTION, LEAD
from tests.support.replicas import replica, replica_process


def headers(tenant: str, roles: tuple[str, ...] = ("rep",)) -> dict[str, str]:
    verifier = TokenVerifier(make_settings(Path("/nonexistent")))
    return {"Authorization": f"Bearer {verifier.mint(tenant_id=tenant, user_id=f'{tenant}-u', roles=roles)}"}


def test_runs_are_recorded_with_model_tokens_cost_and_outcome(
    tmp_path: Path, database_url: str | None, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI
) -> None:
    _, openai_url = fake_openai
    settings = make_settings(tmp_path, database_url=database_url, llm_providers="openai,local",
                             openai_base_url=openai_url, openai_api_key="sk-test", openai_model="gpt-4o-mini",
                             llm_max_retries=0)
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        acme = headers("acme-audit")
        assert http.post(f"{INTERACTIONS_PATH}/invoke", headers=acme, json={"input": INTERACTION}).status_code == 200
        with http.stream("POST", f"{INSIGHTS_CHAT_PATH}/stream", headers=acme,
                         json={"input": CHAIN_INPUTS[INSIGHTS_CHAT_PATH]}) as response:
            response.read()
        assert http.post(f"{LEAD_SCORING_PATH}/batch", headers=acme,
                         json={"inputs": [LEAD, LEAD]}).status_code == 200
        openai_provider.mode = "error_500"
        assert http.post(f"{INTERACTIONS_PATH}/invoke", headers=acme, json={"input": INTERACTION}).status_code == 200
        http.post(f"{LEAD_SCORING_PATH}/invoke", headers=headers("other-audit"), json={"input": LEAD})

        admin = headers("acme-audit", roles=("admin",))
        runs = http.get("/api/v1/ai/usage/runs", headers=admin).json()
        # The run whose LLM failed was answered by the local analysis: degraded, not failed.
        assert len(runs) == 5 and sorted(r["status"] for r in runs) == ["degraded", "ok", "ok", "ok", "ok"]
        by_chain: dict[str, list[dict]] = {}
        for run in runs:
            by_chain.setdefault(run["chain"], []).append(run)
        served = sorted((r["provider"], r["model"]) for r in by_chain["interactions"])
        assert served == [("local", MODEL_VERSION), ("openai", "gpt-4o-mini")], "failover is on the record"
        assert next(r for r in by_chain["interactions"] if r["provider"] == "local")["status"] == "degraded"
        llm_run = next(r for r in by_chain["interactions"] if r["provider"] == "openai")
        assert llm_run["tokens_in"] == 12 and llm_run["tokens_out"] == len(openai_provider.tokens(json_mode=True))
        analysis_request = next(r for r in openai_provider.requests if r.get("response_format"))
        assert analysis_request["stream_options"] == {"include_usage": True}, "usage is asked for on every path"
        assert llm_run["cost_usd"] == pytest.approx(estimate_cost_usd("gpt-4o-mini", 12, llm_run["tokens_out"]))
        assert llm_run["endpoint"] == "invoke" and llm_run["latency_ms"] > 0 and llm_run["degraded"] is False
        assert by_chain["insights"][0]["endpoint"] == "stream"
        assert [r["model"] for r in by_chain["scoring"]] == ["logreg-v2", "logreg-v2"]
        assert all(r["user_id"] == "acme-audit-u" for r in runs)

        usage = http.get("/api/v1/ai/usage", headers=admin).json()
        assert usage["tenant_id"] == "acme-audit" and usage["total_runs"] == 5
        lines = {(line["feature"], line["model"]): line for line in usage["lines"]}
        assert lines[("scoring", "logreg-v2")]["runs"] == 2
        assert lines[("interactions", "gpt-4o-mini")]["tokens_out"] == llm_run["tokens_out"]
        assert usage["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in runs))

        other = http.get("/api/v1/ai/usage", headers=headers("other-audit", roles=("admin",))).json()
        assert other["total_runs"] == 1 and {line["feature"] for line in other["lines"]} == {"scoring"}


def test_a_killed_replicas_runs_read_interrupted_within_seconds_and_no_one_elses(
    tmp_path: Path, database_url: str | None, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI
) -> None:
    """Replicas A and B share the database. A is killed (SIGKILL: no shutdown hooks) in
    the middle of a run while B is running one of its own; B, still alive, marks A's run
    `interrupted` within a heartbeat or two, and leaves its own `running`."""
    _, openai_url = fake_openai
    openai_provider.token_delay_s = 1.0  # ~18 s per run: both are still going
    shared_db = database_url or f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite3'}"
    env = {"AUTH_JWT_SECRET": TEST_SECRET, "DATA_ENCRYPTION_KEY": TEST_DATA_KEY, "APP_ENV": "test", "DATABASE_URL": shared_db,
           "LLM_PROVIDERS": "openai,local", "OPENAI_BASE_URL": openai_url, "OPENAI_API_KEY": "sk-test",
           "AUDIT_HEARTBEAT_S": "0.5", "AUDIT_PROCESS_DEAD_AFTER_S": "2"}
    tenant = f"killed-{'pg' if database_url else 'sqlite'}"
    admin = headers(tenant, roles=("admin",))
    with replica_process({**env, "DATA_DIR": str(tmp_path / "a")}, tmp_path / "a.log") as (a, process), \
            replica({**env, "DATA_DIR": str(tmp_path / "b")}, tmp_path / "b.log") as b, ThreadPoolExecutor(2) as pool:
        on_a = pool.submit(httpx.post, f"{a}{INTERACTIONS_PATH}/invoke", headers=headers(tenant),
                           json={"input": {**INTERACTION, "customer_id": "on-a"}}, timeout=60)
        on_b = pool.submit(httpx.post, f"{b}{INTERACTIONS_PATH}/invoke", headers=headers(tenant),
                           json={"input": {**INTERACTION, "customer_id": "on-b"}}, timeout=60)
        deadline = time.monotonic() + 20
        while len(openai_provider.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(openai_provider.requests) == 2, "both runs reached their LLM call"
        process.send_signal(signal.SIGKILL)  # no shutdown hooks, no chance to finish the record
        process.wait(timeout=10)
        killed_at = time.monotonic()
        statuses: list[str] = []
        while time.monotonic() - killed_at < 30:
            statuses = sorted(r["status"] for r in httpx.get(f"{b}/api/v1/ai/usage/runs", headers=admin).json())
            if statuses == ["interrupted", "running"]:
                break
            time.sleep(0.2)
        assert statuses == ["interrupted", "running"], statuses
        with pytest.raises(httpx.HTTPError):
            on_a.result()
        assert on_b.result().status_code == 200, "B's run was never touched and completed"


def test_no_answer_leaves_before_its_run_is_on_the_audit_trail(tmp_path: Path) -> None:
    """The run starts while its record is being committed, but when the record cannot be
    written the client gets `audit_unavailable` and not one piece of the analysis; once
    the trail can be written again, runs are answered and recorded."""
    import sqlite3

    settings = make_settings(tmp_path)
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        acme = headers("acme-trail")
        assert http.post(f"{INTERACTIONS_PATH}/invoke", headers=acme, json={"input": INTERACTION}).status_code == 200
        database = sqlite3.connect(settings.sqlite_path)
        database.execute("ALTER TABLE ai_runs RENAME TO ai_runs_away")
        database.commit()
        try:
            refused = http.post(f"{INTERACTIONS_PATH}/invoke", headers=acme, json={"input": INTERACTION})
            assert refused.status_code == 503 and refused.json()["code"] == "audit_unavailable"
            with http.stream("POST", f"{INTERACTIONS_PATH}/stream", headers=acme,
                             json={"input": INTERACTION}) as response:
                frames = response.read().decode()
            assert "event: data" not in frames, "no analysis leaves an unrecorded run"
            assert "event: error" in frames and '"code": "audit_unavailable"' in frames and frames.rstrip().endswith("event: end")
        finally:
            database.execute("ALTER TABLE ai_runs_away RENAME TO ai_runs")
            database.commit()
            database.close()
        assert http.post(f"{INTERACTIONS_PATH}/invoke", headers=acme, json={"input": INTERACTION}).status_code == 200
        runs = http.get("/api/v1/ai/usage/runs", headers=headers("acme-trail", roles=("admin",))).json()
        assert [r["status"] for r in runs] == ["ok", "ok"], "the refused runs left no record, the others theirs"


def test_a_client_leaving_while_its_start_record_commits_leaves_a_cancelled_run(tmp_path: Path) -> None:
    """The first piece of an answer waits for the run's start record; a client that gives
    up during that wait must not cancel the commit, or the run would never be finished
    and would read `running`, then `interrupted`, as if its process had died."""
    import sqlite3

    settings = make_settings(tmp_path)
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        acme = headers("acme-leaving")
        assert http.post(f"{INTERACTIONS_PATH}/invoke", headers=acme, json={"input": INTERACTION}).status_code == 200
        locker = sqlite3.connect(settings.sqlite_path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # holds the write lock: the start record waits for it
        try:
            with pytest.raises(httpx.ReadTimeout):
                http.post(f"{INTERACTIONS_PATH}/invoke", headers=acme, json={"input": INTERACTION}, timeout=1.0)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        admin = headers("acme-leaving", roles=("admin",))
        deadline = time.monotonic() + 10
        statuses: list[str] = []
        while time.monotonic() < deadline:
            statuses = [r["status"] for r in http.get("/api/v1/ai/usage/runs", headers=admin).json()]
            if len(statuses) == 2 and "running" not in statuses:
                break
            time.sleep(0.1)
        assert statuses == ["cancelled", "ok"], statuses
