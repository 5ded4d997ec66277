"""Interaction analysis: sentiment, intent, urgency, summary and ranked next best actions.

Fast signals (lexicon sentiment, cue-rule intent and urgency) go out first, within
milliseconds; the summary streams from the provider router; recommendations close the
analysis. If every provider fails, the summary is composed locally and the analysis is
marked degraded instead of failing: a rep mid-call needs an answer, not an error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.utils import AddableDict

from chains.context import run_context
from chains.ports import CpuRunner
from chains.local.composer import compose_summary
from chains.local.intent import assess_urgency, classify_intent
from chains.local.sentiment import analyze_sentiment
from chains.prompts import summary_messages
from chains.providers.router import ProviderError, ProviderRouter, ProviderStreamInterrupted
from chains.recommendations import recommend
from chains.censor import censored
from chains.safety import GuardResult, guard_untrusted, reported
from chains.schemas import InteractionAnalysis, InteractionInput
from chains.streaming import field_streaming_chain
from chains.text import excerpt


def analyze_fast(payload: dict[str, Any]) -> dict[str, Any]:
    """The signals that need no provider: also the degraded answer under overload."""
    text = payload["text"]
    sentiment = analyze_sentiment(text)
    intent = classify_intent(text)
    urgency = assess_urgency(
        text,
        sentiment=sentiment,
        intent=intent.intent,
        channel=payload["channel"],
        time_sensitive=bool(payload.get("time_sensitive")),
        high_value=payload.get("customer_tier") == "high_value",
    )
    recommendations = recommend(intent, sentiment, urgency, payload.get("customer_tier", "standard"))
    return {
        "sentiment": sentiment.model_dump(),
        "intent": intent.intent,
        "intent_confidence": intent.confidence,
        "cues": list(intent.cues),
        "urgency": urgency,
        "recommendations": [r.model_dump() for r in recommendations],
    }


def prepare(payload: dict[str, Any]) -> tuple[dict[str, Any], GuardResult]:
    """The CPU work before any provider is called, in one hop off the loop: the fast
    signals (on the bounded excerpt) and the injection guard (on the whole text)."""
    return analyze_fast({**payload, "text": excerpt(payload["text"])[0]}), guard_untrusted(payload["text"])


def local_summary(text: str, payload: dict[str, Any], fast: dict[str, Any]) -> str:
    return compose_summary(
        text=text,
        sentiment=fast["sentiment"]["label"],
        intent=fast["intent"],
        urgency=fast["urgency"],
        channel=payload["channel"],
        customer_tier=payload.get("customer_tier", "standard"),
        cues=fast["cues"],
    )


def signals_of(fast: dict[str, Any]) -> str:
    sentiment = fast["sentiment"]
    return (
        f"sentiment {sentiment['label']} ({sentiment['score']:+.2f}), intent {fast['intent']}, "
        f"urgency {fast['urgency']}"
    )


def build_interaction_chain(router: ProviderRouter, cpu: CpuRunner) -> Runnable[Any, Any]:
    async def analyse(
        payload: dict[str, Any], config: RunnableConfig
    ) -> AsyncIterator[dict[str, Any]]:
        tenant_id = run_context(config).identity.tenant_id  # fail closed before any work
        truncated = excerpt(payload["text"])[1]
        fast, checked = await cpu.run(tenant_id, prepare, payload)
        yield AddableDict(sentiment=fast["sentiment"])
        yield AddableDict(intent=fast["intent"], urgency=fast["urgency"])
        guard = reported(checked, original=payload["text"], source="interaction.text", config=config)
        degraded_reason: str | None = None
        streamed_any = False
        prompt = summary_messages(
            guard.text, channel=payload["channel"], signals=signals_of(fast), flagged=guard.flagged
        )

        async def local() -> str:
            return await cpu.run(tenant_id, local_summary, excerpt(guard.text)[0], payload, fast)

        try:
            async for token in censored(router.astream_text(prompt, config=config, local=local)):
                streamed_any = True
                yield AddableDict(summary=token)
        except ProviderStreamInterrupted:
            degraded_reason = "provider_interrupted"
        except ProviderError:
            degraded_reason = "providers_unavailable"
        if not streamed_any:
            yield AddableDict(summary=await local())
        yield AddableDict(recommendations=fast["recommendations"])
        yield AddableDict(
            degraded=degraded_reason is not None, degraded_reason=degraded_reason, text_truncated=truncated
        )

    return field_streaming_chain(
        "interaction_analysis", analyse, InteractionInput, InteractionAnalysis
    )
