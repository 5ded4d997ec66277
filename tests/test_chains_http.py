"""Each chain answers invoke, batch, stream and stream_events over real HTTP."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH, LEAD_SCORING_PATH
from chains.streaming import FieldChunk
from tests.support.fake_openai import FakeOpenAI
from tests.support.payloads import CHAIN_INPUTS, INTERACTION, LEAD


def sse_events(body: str) -> list[tuple[str, str]]:
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next((l[7:] for l in lines if l.startswith("event: ")), "message")
        data = "\n".join(l[6:] for l in lines if l.startswith("data: "))
        events.append((name, data))
    return events


def check_interaction(output: dict) -> None:
    assert output["sentiment"]["label"] == "negative" and -1 <= output["sentiment"]["score"] < 0
    assert output["intent"] == "cancellation_risk"
    assert output["urgency"] == "high"
    assert output["summary"]
    ranks = [r["confidence"] * r["estimated_impact"] for r in output["recommendations"]]
    assert ranks and ranks == sorted(ranks, reverse=True)
    assert output["degraded"] is False


def check_score(output: dict) -> None:
    assert 0 <= output["score"] <= 100 and isinstance(output["score"], int)
    total = output["base_log_odds"] + sum(f["weight"] for f in output["reasoning"])
    assert abs(100 / (1 + math.exp(-total)) - output["score"]) <= 0.5 + 1e-6


def check_answer(output: dict) -> None:
    assert isinstance(output["answer"], str) and output["answer"]
    assert isinstance(output["sources"], list)


CHECKS = {INTERACTIONS_PATH: check_interaction, LEAD_SCORING_PATH: check_score,
          INSIGHTS_CHAT_PATH: check_answer}
PATHS = list(CHECKS)


@pytest.mark.parametrize("path", PATHS)
def test_invoke(client: httpx.Client, path: str) -> None:
    response = client.post(f"{path}/invoke", json={"input": CHAIN_INPUTS[path]})
    assert response.status_code == 200, response.text
    CHECKS[path](response.json()["output"])
    assert response.json()["metadata"]["run_id"]


@pytest.mark.parametrize("path", PATHS)
def test_batch(client: httpx.Client, path: str) -> None:
    response = client.post(f"{path}/batch", json={"inputs": [CHAIN_INPUTS[path]] * 2})
    assert response.status_code == 200, response.text
    outputs = response.json()["output"]
    assert len(outputs) == 2
    for output in outputs:
        CHECKS[path](output)


def merge_chunks(chunks: list[dict]) -> dict:
    """Merge the wire chunks by the contract's rule, the one `invoke` applies server-side."""
    merged = FieldChunk()
    for chunk in chunks:
        merged = merged + chunk
    return dict(merged)


@pytest.mark.parametrize("path", PATHS)
def test_stream(client: httpx.Client, path: str) -> None:
    with client.stream("POST", f"{path}/stream", json={"input": CHAIN_INPUTS[path]}) as response:
        assert response.status_code == 200
        events = sse_events("".join(response.iter_text()))
    names = [name for name, _ in events]
    assert names[0] == "metadata" and names[-1] == "end"
    chunks = [json.loads(data) for name, data in events if name == "data"]
    assert chunks
    CHECKS[path](merge_chunks(chunks))


def test_interaction_stream_sends_provisional_labels_first_and_recommendations_last(
    client: httpx.Client, openai_provider: FakeOpenAI
) -> None:
    openai_provider.token_delay_s = 0.01  # paced, as a provider writes: tokens read together go on together
    with client.stream("POST", f"{INTERACTIONS_PATH}/stream", json={"input": INTERACTION}) as response:
        chunks = [json.loads(d) for n, d in sse_events("".join(response.iter_text())) if n == "data"]
    assert chunks[0]["provisional"] is True and "sentiment" in chunks[0], "local labels come first"
    order = [key for chunk in chunks for key in chunk]
    assert order.index("recommendations") > order.index("summary") > order.index("sentiment")
    assert sum(1 for chunk in chunks if "summary" in chunk) > 3, "summary must stream in pieces"


@pytest.mark.parametrize("path", PATHS)
def test_stream_events(client: httpx.Client, path: str) -> None:
    with client.stream("POST", f"{path}/stream_events", json={"input": CHAIN_INPUTS[path]}) as response:
        assert response.status_code == 200
        events = sse_events("".join(response.iter_text()))
    kinds = [json.loads(data)["event"] for name, data in events if name == "data"]
    assert kinds[0] == "on_chain_start" and kinds[-1] == "on_chain_end"
    assert events[-1][0] == "end"
    if path != LEAD_SCORING_PATH:
        assert "on_chat_model_stream" in kinds, "provider tokens must show in stream_events"


def test_lead_score_depends_on_engagement(client: httpx.Client) -> None:
    cold = {"lead_id": "cold", "job_title": "Intern", "source": "cold_outbound",
            "days_since_last_activity": 120, "email_clicks_30d": 0, "demo_requested": False}
    hot = client.post(f"{LEAD_SCORING_PATH}/invoke", json={"input": LEAD}).json()["output"]
    cold_out = client.post(f"{LEAD_SCORING_PATH}/invoke", json={"input": cold}).json()["output"]
    assert hot["score"] > cold_out["score"] + 20


def test_a_stream_nobody_listens_to_reads_its_chunks_without_a_task_each(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LangChain's `RunnableGenerator` reads every chunk in an asyncio task of its own, for
    callbacks. On `stream` nobody listens (LangServe's event aggregator is never read
    back), so the chain's chunks come straight from its body; `stream_events` listens and
    keeps LangChain's path, which the count proves is watched."""
    from langchain_core.runnables import base

    tasks_per_chunk = 0
    make_task = base.coro_with_context

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal tasks_per_chunk
        tasks_per_chunk += 1
        return make_task(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(base, "coro_with_context", counted)
    seen = {}
    for endpoint in ("stream", "stream_events"):
        tasks_per_chunk = 0
        with client.stream("POST", f"{INTERACTIONS_PATH}/{endpoint}", json={"input": INTERACTION}) as response:
            events = sse_events("".join(response.iter_text()))
        seen[endpoint] = (tasks_per_chunk, sum(1 for name, _ in events if name == "data"))
    (stream_tasks, stream_chunks), (listened_tasks, _) = seen["stream"], seen["stream_events"]
    assert stream_chunks > 3 and stream_tasks == 0, seen
    assert listened_tasks >= stream_chunks, seen
