"""The embedded `local` model: real analysis, streamed natively without executor hops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.core.cpu_pool import FairCpuPool
from chains.context import run_config
from chains.interactions import build_interaction_chain
from chains.local.composer import compose_answer, compose_summary
from chains.local.intent import classify_intent
from chains.local.sentiment import analyze_sentiment
from chains.providers.router import ProviderRouter
from chains.providers.settings import ProviderSettings


@pytest.mark.parametrize(
    ("text", "label"),
    [("Thanks, the new reports are brilliant!", "positive"),
     ("We were overcharged and nobody answers. Terrible.", "negative"),
     ("Please send the March invoice to accounts.", "neutral")],
)
def test_sentiment_labels(text: str, label: str) -> None:
    assert analyze_sentiment(text).label == label


@pytest.mark.parametrize(
    ("text", "intent"),
    [("We will cancel the contract if this continues", "cancellation_risk"),
     ("How much is the Pro plan per seat?", "pricing_inquiry"),
     ("Can we schedule a demo on Tuesday?", "meeting_request"),
     ("Where is your office?", "general_inquiry")],
)
def test_intents(text: str, intent: str) -> None:
    assert classify_intent(text).intent == intent


def router() -> ProviderRouter:
    return ProviderRouter.from_settings(ProviderSettings(llm_providers=["local"]))


def test_summary_quotes_the_most_telling_sentence() -> None:
    text = compose_summary(
        text="Hello team. The export has been broken for three days and we are furious.",
        sentiment="negative", intent="complaint", urgency="high", channel="email",
        customer_tier="standard", cues=["broken"],
    )
    assert "broken for three days" in text and "Hello team" not in text
    assert "complaining" in text and "high urgency" in text


def test_answer_cites_the_closest_source() -> None:
    passages = [("Contract", "Notice period is 60 days. Payment is net 30."),
                ("Team", "Dana is the buyer. Luis runs operations.")]
    text = compose_answer("Who is the buyer?", passages)
    assert "Dana is the buyer. [2]" in text and "Sources: " in text


async def test_local_analysis_hops_to_the_cpu_pool_once_per_step_not_per_token(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    hops: list[Any] = []
    original = loop.run_in_executor

    def counting(*args: Any) -> Any:
        hops.append(args)
        return original(*args)

    monkeypatch.setattr(loop, "run_in_executor", counting)
    chain = build_interaction_chain(router(), FairCpuPool(1))
    payload = {"customer_id": "c", "text": "We love it, but the price is too high. Any discount?",
               "channel": "chat", "customer_tier": "standard", "time_sensitive": False}
    chunks = [chunk async for chunk in chain.astream(payload, run_config("t", "u"))]
    assert sum(1 for chunk in chunks if "summary" in chunk) > 5
    assert len(hops) == 2, "the fast signals and the summary: CPU work off the loop, once each"
