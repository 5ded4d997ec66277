"""The LLM's structured analysis, through the real langchain-openai client and the service.

The fake provider streams a JSON object word by word, as a real one does in JSON mode;
what it streams is varied to be valid, broken, of the wrong schema, or cut off.
"""

from __future__ import annotations

import json
import uuid

import httpx

from app.api.chains import INTERACTIONS_PATH
from tests.support.fake_openai import ANALYSIS_REPLY, FakeOpenAI
from tests.support.payloads import INTERACTION
from tests.test_chains_http import merge_chunks, sse_events

LLM_ANALYSIS = json.loads(ANALYSIS_REPLY)


def stream(client: httpx.Client, payload: dict) -> list[dict]:
    with client.stream("POST", f"{INTERACTIONS_PATH}/stream", json={"input": payload}) as response:
        assert response.status_code == 200
        events = sse_events("".join(response.iter_text()))
    assert [name for name, _ in events][-1] == "end", "a fallback is an answer, never an error event"
    return [json.loads(data) for name, data in events if name == "data"]


def test_llm_labels_replace_the_provisional_ones_before_its_summary_streams(
    client: httpx.Client, openai_provider: FakeOpenAI
) -> None:
    # The LLM disagrees with the local model on urgency, so the replacement is visible.
    openai_provider.json_reply = json.dumps({**LLM_ANALYSIS, "urgency": "medium"})
    openai_provider.token_delay_s = 0.01  # paced, as a provider writes: tokens read together go on together
    chunks = stream(client, INTERACTION)
    assert chunks[0]["provisional"] is True and chunks[0]["urgency"] == "high", "local labels first"
    final = next(i for i, c in enumerate(chunks) if c.get("provisional") is False)
    assert chunks[final]["urgency"] == "medium" and chunks[final]["confidence"] == LLM_ANALYSIS["confidence"]
    summary_pieces = [i for i, c in enumerate(chunks) if "summary" in c]
    assert len(summary_pieces) > 3 and min(summary_pieces) > final, "labels are known before the summary streams"
    merged = merge_chunks(chunks)
    assert merged["urgency"] == "medium" and merged["summary"] == LLM_ANALYSIS["summary"]
    assert merged["preferences"] == LLM_ANALYSIS["preferences"] and merged["degraded"] is False


def test_an_emoji_split_between_two_chunks_arrives_whole(client: httpx.Client, openai_provider: FakeOpenAI) -> None:
    """A gateway that slices text in UTF-16 (as JavaScript does) sends an emoji's two
    halves in two chunks, each a lone surrogate: the summary once failed to parse, and
    could not have been sent either."""
    summary = "The customer loved the demo 😀 and wants a quote 👍🏽 before Friday."
    openai_provider.json_reply = json.dumps({**LLM_ANALYSIS, "summary": summary}, ensure_ascii=False)
    openai_provider.split_astral = True
    openai_provider.token_delay_s = 0.01  # each half read on its own, not joined in a group
    assert any("\ud800" <= token[-1] <= "\udbff" for token in openai_provider.tokens(json_mode=True)), "halves apart"
    merged = merge_chunks(stream(client, INTERACTION))
    assert merged["degraded"] is False and merged["summary"] == summary


def test_a_fenced_object_is_read_and_prose_falls_back_to_the_local_analysis(
    client: httpx.Client, openai_provider: FakeOpenAI
) -> None:
    openai_provider.json_reply = "Sure! Here is the analysis:\n```json\n" + ANALYSIS_REPLY + "\n```"
    fenced = merge_chunks(stream(client, INTERACTION))
    assert fenced["degraded"] is False and fenced["summary"] == LLM_ANALYSIS["summary"]

    openai_provider.json_reply = "The customer is angry about outages and wants a fix today."
    merged = merge_chunks(stream(client, INTERACTION))
    assert merged["degraded"] is True and merged["degraded_reason"] == "llm_malformed_json"
    assert "may leave" in merged["summary"] and "angry" not in merged["summary"]
    assert merged["intent"] == "cancellation_risk" and merged["recommendations"]


def test_json_cut_short_keeps_what_was_valid_and_falls_back_for_the_rest(
    client: httpx.Client, openai_provider: FakeOpenAI
) -> None:
    # Labels and summary arrive; the object never closes (the provider stopped at its token limit).
    openai_provider.json_reply = ANALYSIS_REPLY[: ANALYSIS_REPLY.index('"next_best_actions"') + 30]
    merged = merge_chunks(stream(client, INTERACTION))
    assert merged["degraded"] is True and merged["degraded_reason"] == "llm_malformed_json"
    assert merged["confidence"] == LLM_ANALYSIS["confidence"], "the validated LLM labels stay"
    assert merged["summary"] == LLM_ANALYSIS["summary"], "the streamed summary is not repeated or replaced"
    actions = [r["action"] for r in merged["recommendations"]]
    assert actions and "call_with_fix_plan" not in actions, "actions come from the playbook, not the broken JSON"


def test_labels_outside_the_schema_are_rejected(client: httpx.Client, openai_provider: FakeOpenAI) -> None:
    openai_provider.json_reply = json.dumps({**LLM_ANALYSIS, "intent": "wants_refund"})
    chunks = stream(client, INTERACTION)
    assert not any(c.get("intent") == "wants_refund" for c in chunks), "an invented label never reaches a rep"
    merged = merge_chunks(chunks)
    assert merged["degraded"] is True and merged["degraded_reason"] == "llm_schema_violation"
    assert merged["intent"] == "cancellation_risk" and "may leave" in merged["summary"]


def test_the_llm_is_told_the_customers_history(client: httpx.Client, openai_provider: FakeOpenAI) -> None:
    customer = f"history-{uuid.uuid4().hex[:8]}"
    first = {**INTERACTION, "customer_id": customer}
    merge_chunks(stream(client, first))
    merge_chunks(stream(client, {**first, "text": "Still down. Nobody has called me back."}))
    first_prompt, second_prompt = (json.dumps(r["messages"]) for r in openai_provider.requests[-2:])
    assert "No earlier interactions on record." in first_prompt
    assert "1 issue(s) in the last 7 days" in second_prompt
    assert LLM_ANALYSIS["summary"] in second_prompt, "the earlier analysis is remembered by its summary"
    other = {**INTERACTION, "customer_id": f"other-{uuid.uuid4().hex[:8]}"}
    merge_chunks(stream(client, other))
    assert "No earlier interactions on record." in json.dumps(openai_provider.requests[-1]["messages"])
