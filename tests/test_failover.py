"""Provider failover through the real langchain-openai client against a failing server."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH
from chains.interactions import INTERRUPTED_SUMMARY
from tests.support.fake_openai import ANALYSIS_REPLY, FakeOpenAI
from tests.support.payloads import INTERACTION, QUESTION
from tests.test_chains_http import sse_events


def analyse(client: httpx.Client) -> dict:
    response = client.post(f"{INTERACTIONS_PATH}/invoke", json={"input": INTERACTION})
    assert response.status_code == 200, response.text
    return response.json()["output"]


LLM_ANALYSIS = json.loads(ANALYSIS_REPLY)


def test_healthy_provider_does_the_analysis(client: httpx.Client, openai_provider: FakeOpenAI) -> None:
    output = analyse(client)
    assert output["summary"] == LLM_ANALYSIS["summary"]
    assert output["confidence"] == LLM_ANALYSIS["confidence"], "the LLM's labels replaced the local ones"
    assert output["pain_points"] == LLM_ANALYSIS["pain_points"]
    assert [r["action"] for r in output["recommendations"]] == ["call_with_fix_plan", "escalate_to_manager"]
    assert output["provisional"] is False and output["degraded"] is False
    assert len(openai_provider.requests) == 1
    request = openai_provider.requests[0]
    assert request["response_format"] == {"type": "json_object"}, "one JSON object is asked for"
    sent = json.dumps(request["messages"])
    assert sent.count("Third outage this week") == 1, "the customer's text goes to the LLM once"
    assert "cancellation_risk" in sent, "the label definitions travel with the prompt"


def assert_local_analysis(output: dict, reason: str) -> None:
    """Without an LLM's answer, the rep still gets the whole analysis, labelled as the weaker one."""
    assert output["degraded"] is True and output["degraded_reason"] == reason
    assert output["summary"] != LLM_ANALYSIS["summary"]
    assert "may leave" in output["summary"], "the local model composed the summary"
    assert output["intent"] == "cancellation_risk" and output["recommendations"]


def test_server_errors_are_retried_then_fall_back_to_the_local_analysis(
    client: httpx.Client, openai_provider: FakeOpenAI
) -> None:
    openai_provider.mode = "error_500"
    output = analyse(client)
    assert len(openai_provider.requests) == 2, "one try plus one retry (LLM_MAX_RETRIES=1)"
    assert_local_analysis(output, "providers_unavailable")


def test_auth_errors_fall_back_without_retry(client: httpx.Client, openai_provider: FakeOpenAI) -> None:
    openai_provider.mode = "error_401"
    output = analyse(client)
    assert len(openai_provider.requests) == 1
    assert_local_analysis(output, "providers_unavailable")


def test_silent_provider_times_out_and_falls_back(client: httpx.Client, openai_provider: FakeOpenAI) -> None:
    openai_provider.mode = "hang"
    started = time.monotonic()
    output = analyse(client)
    elapsed = time.monotonic() - started
    assert_local_analysis(output, "providers_unavailable")
    assert len(openai_provider.requests) == 1, "a first-token timeout moves on, no retry"
    assert elapsed < 30, "never hangs"


def test_failure_after_streaming_began_degrades_the_analysis(
    client: httpx.Client, openai_provider: FakeOpenAI
) -> None:
    openai_provider.mode = "fail_midstream"  # the labels and two words of the summary, then a drop
    output = analyse(client)
    assert output["degraded"] is True and output["degraded_reason"] == "provider_interrupted"
    assert output["confidence"] == LLM_ANALYSIS["confidence"], "the validated labels stay"
    written, _, local = output["summary"].partition(INTERRUPTED_SUMMARY)
    assert written == "The customer " and "may leave" in local, "the unfinished summary is completed locally"
    assert output["recommendations"], "the playbook, weighed on the LLM's labels"


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
