"""Provider failover through the real langchain-openai client against a failing server."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH
from tests.support.fake_openai import FakeOpenAI
from tests.support.payloads import INTERACTION, QUESTION
from tests.test_chains_http import sse_events


def analyse(client: httpx.Client) -> dict:
    response = client.post(f"{INTERACTIONS_PATH}/invoke", json={"input": INTERACTION})
    assert response.status_code == 200, response.text
    return response.json()["output"]


def test_healthy_provider_writes_the_summary(client: httpx.Client, openai_provider: FakeOpenAI) -> None:
    output = analyse(client)
    assert output["summary"] == openai_provider.reply
    assert len(openai_provider.requests) == 1
    sent = json.dumps(openai_provider.requests[0]["messages"])
    assert sent.count("Third outage this week") == 1, "the customer's text goes to the LLM once"
    assert "cancellation_risk" in sent


def test_server_errors_are_retried_then_fail_over_to_local(
    client: httpx.Client, openai_provider: FakeOpenAI
) -> None:
    openai_provider.mode = "error_500"
    output = analyse(client)
    assert len(openai_provider.requests) == 2, "one try plus one retry (LLM_MAX_RETRIES=1)"
    assert output["summary"] != openai_provider.reply
    assert "may cancel" in output["summary"], "the local model composed the summary"
    assert output["degraded"] is False, "a configured fallback provider is not degradation"


def test_auth_errors_fail_over_without_retry(client: httpx.Client, openai_provider: FakeOpenAI) -> None:
    openai_provider.mode = "error_401"
    output = analyse(client)
    assert len(openai_provider.requests) == 1
    assert "may cancel" in output["summary"]


def test_silent_provider_times_out_and_fails_over(client: httpx.Client, openai_provider: FakeOpenAI) -> None:
    openai_provider.mode = "hang"
    started = time.monotonic()
    output = analyse(client)
    elapsed = time.monotonic() - started
    assert "may cancel" in output["summary"]
    assert len(openai_provider.requests) == 1, "a first-token timeout moves on, no retry"
    assert elapsed < 30, "never hangs"


def test_failure_after_streaming_began_degrades_the_analysis(
    client: httpx.Client, openai_provider: FakeOpenAI
) -> None:
    openai_provider.mode = "fail_midstream"
    output = analyse(client)
    assert output["degraded"] is True and output["degraded_reason"] == "provider_interrupted"
    assert output["summary"] == "".join(openai_provider.tokens()[: openai_provider.fail_after_tokens])
    assert output["recommendations"], "fast signals and actions still arrive"


def test_chat_stream_interrupted_mid_answer_ends_with_an_error_event(
    client: httpx.Client, openai_provider: FakeOpenAI
) -> None:
    openai_provider.mode = "fail_midstream"
    with client.stream("POST", f"{INSIGHTS_CHAT_PATH}/stream", json={"input": QUESTION}) as response:
        events = sse_events("".join(response.iter_text()))
    names = [name for name, _ in events]
    assert names[-2:] == ["error", "end"], names
    error = json.loads(events[-2][1])
    assert error["code"] == "provider_interrupted" and error["retryable"] is True
    assert error["status_code"] == 503 and error["message"]
    answer = "".join(json.loads(d).get("answer", "") for n, d in events if n == "data")
    assert answer == "".join(openai_provider.tokens()[: openai_provider.fail_after_tokens])


@pytest.mark.parametrize("mode", ["error_500", "hang"])
def test_chat_fails_over_before_the_first_token(
    client: httpx.Client, openai_provider: FakeOpenAI, mode: str
) -> None:
    openai_provider.mode = mode  # type: ignore[assignment]
    response = client.post(f"{INSIGHTS_CHAT_PATH}/invoke", json={"input": QUESTION})
    assert response.status_code == 200
    assert response.json()["output"]["answer"], "the local model answered"
