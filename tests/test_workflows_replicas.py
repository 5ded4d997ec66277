"""Background runs across real uvicorn replicas sharing a real PostgreSQL and Redis:
leave a run on one replica and rejoin it on the other, cancel it from the other, and
kill -9 the replica that runs it.

Runs are insights-chat runs answered by the fake OpenAI server (in this test process)
with a delay per token, so they are still going while replicas come and go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.auth import TokenVerifier
from tests.conftest import TEST_DATA_KEY, TEST_SECRET, make_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.replicas import replica, replica_process
from tests.support.servers import postgres_server, redis_server, stop
from tests.support.workflows import SLOW_REPLY, WORKFLOWS, follow_sse, follow_ws, merged, start, wait_for_status

VERIFIER = TokenVerifier(make_settings(Path("/nonexistent"), auth_jwt_secret=TEST_SECRET))
TOKEN = VERIFIER.mint(tenant_id="acme", user_id="alice", roles=("rep",))
QUESTION = {"customer_id": "wf-replicas", "question": "What did we promise them?"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, fake_openai: tuple[FakeOpenAI, str]) -> Iterator[dict[str, str]]:
    base = tmp_path_factory.mktemp("workflow-replicas")
    _, openai_url = fake_openai
    with postgres_server() as database_url, redis_server(base / "redis") as redis_url:
        yield {
            "AUTH_JWT_SECRET": TEST_SECRET, "DATA_ENCRYPTION_KEY": TEST_DATA_KEY, "APP_ENV": "test",
            "REDIS_URL": redis_url, "DATABASE_URL": database_url,
            "LLM_PROVIDERS": "openai,local", "OPENAI_BASE_URL": openai_url, "OPENAI_API_KEY": "sk-test",
            "OPENAI_MODEL": "fake-gpt", "LLM_FIRST_TOKEN_TIMEOUT_S": "5", "LLM_IDLE_TIMEOUT_S": "5",
            # A silent replica is dead after 2 s; every replica looks for its runs 5 times a second.
            "AUDIT_HEARTBEAT_S": "0.5", "AUDIT_PROCESS_DEAD_AFTER_S": "2", "WORKFLOW_SWEEP_S": "0.2",
            "DATA_DIR": str(base / "shared"),
            "RATE_LIMIT_TENANT": "100000/minute", "RATE_LIMIT_USER": "100000/minute",  # tests poll
        }


@pytest.fixture(scope="module")
def replicas(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    logs = tmp_path_factory.mktemp("workflow-replica-logs")
    with replica(env, logs / "a.log") as a, replica(env, logs / "b.log") as b:
        yield a, b


def client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


@pytest.fixture
def slow(openai_provider: FakeOpenAI) -> FakeOpenAI:
    openai_provider.reply, openai_provider.token_delay_s = SLOW_REPLY, 0.1
    return openai_provider


def test_a_run_left_on_one_replica_is_rejoined_on_the_other(replicas: tuple[str, str], slow: FakeOpenAI) -> None:
    a, b = replicas
    with client(a) as on_a, client(b) as on_b:
        run = start(on_a, "insights/chat", QUESTION)
        first = follow_sse(on_a, run["id"], leave_after=4)
        assert on_b.get(f"{WORKFLOWS}/{run['id']}").json()["status"] == "running"
        rest = asyncio.run(follow_ws(b, TOKEN, run["id"], last_event_id=first[-1]["id"]))
        assert rest[-1]["type"] == "end" and rest[-1]["data"]["status"] == "succeeded"
        reference = follow_sse(on_b, run["id"])
        assert first + rest == reference, "every event once, in order, across replicas"
        assert "word29" in merged(reference)["answer"]
        assert on_a.get(f"{WORKFLOWS}/{run['id']}").json()["output"]["answer"] == merged(reference)["answer"]


def test_a_run_is_cancelled_from_the_other_replica(replicas: tuple[str, str], slow: FakeOpenAI) -> None:
    a, b = replicas
    with client(a) as on_a, client(b) as on_b:
        run = start(on_a, "insights/chat", QUESTION)
        follow_sse(on_b, run["id"], leave_after=3)  # running, and streaming
        answer = on_b.delete(f"{WORKFLOWS}/{run['id']}")
        assert answer.status_code in (200, 202), "200 once final, 202 if still stopping after a second"
        assert wait_for_status(on_b, run["id"], {"cancelled", "succeeded"})["status"] == "cancelled"
        assert follow_sse(on_a, run["id"])[-1]["data"]["status"] == "cancelled"


def test_killing_the_replica_mid_run_interrupts_or_retries_its_runs(
    replicas: tuple[str, str], env: dict[str, str], tmp_path: Path, slow: FakeOpenAI
) -> None:
    a, b = replicas
    slow.token_delay_s = 0.5  # fifteen seconds a run: the kill lands mid-run even on a loaded machine
    with replica_process(env, tmp_path / "doomed.log") as (doomed_url, doomed), client(doomed_url) as on_doomed, \
            client(a) as on_a:
        plain = start(on_doomed, "insights/chat", QUESTION)
        retried = start(on_doomed, "insights/chat", QUESTION, retry=True)
        before_kill = follow_sse(on_a, retried["id"], leave_after=4)
        wait_for_status(on_a, plain["id"], {"running"})
        doomed.kill()  # SIGKILL: no clean hand-over
        doomed.wait()

        interrupted = wait_for_status(on_a, plain["id"], {"interrupted", "succeeded", "failed"}, timeout_s=30)
        assert interrupted["status"] == "interrupted", "never `running` forever"
        assert interrupted["error"]["code"] == "interrupted" and interrupted["finished_at"] is not None
        plain_events = follow_sse(on_a, plain["id"])
        assert plain_events[-1]["type"] == "end" and plain_events[-1]["data"]["status"] == "interrupted"

        done = wait_for_status(on_a, retried["id"], {"succeeded", "failed", "interrupted"}, timeout_s=60)
        assert done["status"] == "succeeded" and done["attempt"] == 2, "re-queued once, finished elsewhere"
        with client(b) as on_b:
            log = follow_sse(on_b, retried["id"], last_event_id=before_kill[-1]["id"])
        requeued = [e for e in log if e["type"] == "status" and e["data"]["attempt"] == 2]
        assert [e["data"]["status"] for e in requeued] == ["queued", "running"]
        second_attempt = merged(log[log.index(requeued[0]):])
        assert "word29" in second_attempt["answer"] and second_attempt["answer"] == done["output"]["answer"]
        assert log[-1]["data"]["status"] == "succeeded"


def test_a_replica_stopping_cleanly_hands_its_runs_over(
    replicas: tuple[str, str], env: dict[str, str], tmp_path: Path, slow: FakeOpenAI
) -> None:
    a, _ = replicas
    slow.token_delay_s = 0.5  # fifteen seconds a run: SIGTERM lands mid-run even on a loaded machine
    with replica_process(env, tmp_path / "leaving.log") as (leaving_url, leaving), client(leaving_url) as on_leaving, \
            client(a) as on_a:
        plain = start(on_leaving, "insights/chat", QUESTION)
        retried = start(on_leaving, "insights/chat", QUESTION, retry=True)
        for run in (plain, retried):
            wait_for_status(on_a, run["id"], {"running"})
        stop(leaving)  # SIGTERM: a deploy, say
        stopped = on_a.get(f"{WORKFLOWS}/{plain['id']}").json()
        assert stopped["status"] == "interrupted", "marked on the way out, not after the dead-after delay"
        done = wait_for_status(on_a, retried["id"], {"succeeded", "failed", "interrupted"}, timeout_s=60)
        assert done["status"] == "succeeded" and done["attempt"] == 2
        log = follow_sse(on_a, retried["id"])
        statuses = [(e["data"]["status"], e["data"]["attempt"]) for e in log if e["type"] in ("status", "end")]
        assert statuses == [("queued", 1), ("running", 1), ("queued", 2), ("running", 2), ("succeeded", 2)]
