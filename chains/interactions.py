"""Interaction analysis: sentiment, intent, urgency, pain points, preferences, summary and
ranked next best actions, for one message, in the light of the customer's history.

The stream (`chains.streaming.FieldChunk`: `summary` appends, other fields are replaced):

1. Within milliseconds, the learned local labels, marked `provisional: true`.
2. The customer's history is read (issues this week, sentiment trend).
3. When an LLM serves (and the message is not spam or machine mail), it does the
   analysis: one structured JSON call (`chains.structured`) whose labels replace the
   provisional ones (`provisional: false`) as soon as they are valid, whose summary
   streams, and whose actions close the analysis. A malformed answer, a schema
   violation, a timeout or a provider failure falls back to the local result with
   `degraded: true` and a `degraded_reason`; never a failed request.
4. Without an LLM, the local labels with the context applied are final, the local
   summary streams, the ranked plays close the analysis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from chains.censor import StreamingCensor, censor_text
from chains.context import run_context
from chains.customer_context import CustomerContext, build_context, raise_urgency
from chains.local.analysis import MessageReading, local_fields, local_labels, read_message
from chains.local.classifier import MODEL_VERSION
from chains.ports import CpuRunner, InteractionHistory, KnowledgeSearch
from chains.providers.router import ProviderError, ProviderRouter, ProviderStreamInterrupted, stream_words
from chains.providers.settings import LOCAL
from chains.recommendations import Signals, recommend
from chains.safety import guarded, reported
from chains.schemas import InteractionAnalysis, InteractionInput, Recommendation
from chains.streaming import FieldChunk, field_streaming_chain
from chains.structured import AnalysisStream, LlmAnalysis, LlmClassification, MalformedAnalysis, analysis_messages

LABEL_FIELDS = ("sentiment", "intent", "urgency", "confidence", "uncertain", "automated")
HISTORY_LIMIT = 10
KNOWLEDGE_PASSAGES = 3
MIN_PASSAGE_RELEVANCE = 0.1
INTERRUPTED_SUMMARY = " [interrupted] Local analysis: "


def _labels(fields: dict[str, Any], *, provisional: bool) -> FieldChunk:
    return FieldChunk({key: fields[key] for key in LABEL_FIELDS}, provisional=provisional)


def llm_labels(classification: LlmClassification, local: dict[str, Any], *, time_sensitive: bool) -> dict[str, Any]:
    """The LLM's labels, in the shape of the local ones. The LLM saw the history itself;
    only the caller's time-sensitive flag still raises its urgency."""
    urgency = raise_urgency(classification.urgency, 1 if time_sensitive else 0)
    confidence = classification.confidence.model_dump()
    return {
        "sentiment": classification.sentiment.model_dump(),
        "intent": classification.intent,
        "urgency": urgency,
        "confidence": confidence,
        "uncertain": [task for task, value in confidence.items() if value < 0.5],
        "automated": local["automated"],
    }


def llm_recommendations(analysis: LlmAnalysis, labels: dict[str, Any]) -> list[dict[str, Any]]:
    actions = [
        Recommendation(
            action=censor_text(a.action), description=censor_text(a.description), priority=a.priority,
            confidence=a.confidence, estimated_impact=a.estimated_impact,
            next_steps=[censor_text(step) for step in a.next_steps], reason=censor_text(a.reason),
        )
        for a in analysis.next_best_actions
    ]
    actions.sort(key=lambda r: r.confidence * r.estimated_impact, reverse=True)
    return [r.model_dump() for r in actions[:3]] if not labels["automated"] else []


def fallback_recommendations(labels: dict[str, Any], context: CustomerContext) -> list[dict[str, Any]]:
    """The playbook, weighed against labels that came from the LLM before it failed."""
    signals = Signals(
        intents={labels["intent"]: labels["confidence"]["intent"]},
        sentiments={labels["sentiment"]["label"]: labels["confidence"]["sentiment"]},
        urgency=labels["urgency"], automated=labels["automated"],
    )
    return [r.model_dump() for r in recommend(signals, context)]


def _served_locally(config: RunnableConfig) -> None:
    """The audit trail names what produced the labels: here, the learned local models."""
    record = run_context(config).record
    record.provider, record.model = LOCAL, MODEL_VERSION


def build_interaction_chain(
    router: ProviderRouter, cpu: CpuRunner, history: InteractionHistory, knowledge: KnowledgeSearch
) -> Runnable[Any, Any]:
    async def analyse(payload: dict[str, Any], config: RunnableConfig) -> AsyncIterator[dict[str, Any]]:
        tenant_id = run_context(config).identity.tenant_id  # fail closed before any work
        text, channel, customer_id = payload["text"], payload["channel"], payload["customer_id"]
        time_sensitive = bool(payload.get("time_sensitive"))
        reading: MessageReading = await cpu.run_sized(tenant_id, len(text), read_message, text, channel)
        use_llm = router.has_llm and not reading.automated
        past_task = asyncio.ensure_future(history.recent(tenant_id, customer_id, limit=HISTORY_LIMIT))
        no_context = CustomerContext(tier=payload.get("customer_tier", "standard"))
        yield _labels(local_labels(reading, no_context, time_sensitive=False)[0], provisional=True)

        context = build_context(
            await past_task, now=datetime.now(UTC), current_score=reading.sentiment_score,
            tier=payload.get("customer_tier", "standard"), lead_score=payload.get("lead_score"),
        )
        local = local_fields(reading, context, channel=channel, time_sensitive=time_sensitive)
        guard = reported(reading.guard, original=text, source="interaction.text", config=config)
        if not use_llm:
            _served_locally(config)
            yield _labels(local, provisional=False)
            yield FieldChunk(pain_points=local["pain_points"], preferences=local["preferences"],
                             customer_context=local["customer_context"])
            async for word in stream_words(local["summary"]):
                yield FieldChunk(summary=word)
            yield FieldChunk(recommendations=local["recommendations"])
            yield FieldChunk(degraded=False, degraded_reason=None, text_truncated=reading.truncated)
            return

        passages = [
            passage for passage in await knowledge.search(
                tenant_id=tenant_id, customer_id=customer_id, query=text[:2_000], k=KNOWLEDGE_PASSAGES)
            if passage.score >= MIN_PASSAGE_RELEVANCE
        ]
        guarded_passages = [
            (guarded(p.title, source=f"document_title:{p.document_id}", config=config, replayed=True),
             guarded(p.text, source=f"document:{p.document_id}", config=config, replayed=True))
            for p in passages
        ]
        # Each summary on its own: a customer's summaries come back in every analysis of
        # theirs, and the guard remembers what it found in a text it has read.
        summaries = [guarded(past.summary, source="memory:interactions", config=config, replayed=True)
                     for past in context.prompt_history]
        prompt = analysis_messages(
            guard.text, channel=channel, history=context.prompt_lines(summaries=[s.text for s in summaries]),
            passages=[(title.text, body.text) for title, body in guarded_passages],
            flagged=guard.flagged or any(s.flagged for s in summaries)
            or any(g.flagged for pair in guarded_passages for g in pair),
        )
        stream, censor = AnalysisStream(), StreamingCensor()
        labels: dict[str, Any] | None = None
        summarised = False
        reason: str | None = None
        analysis: LlmAnalysis | None = None
        try:
            async for token in router.astream_text(prompt, config=config, json_mode=True):
                classification, delta = stream.feed(token)
                if classification is not None:
                    labels = llm_labels(classification, local, time_sensitive=time_sensitive)
                    yield _labels(labels, provisional=False)
                if delta and (clean := censor.feed(delta)):
                    summarised = True
                    yield FieldChunk(summary=clean)
            analysis = stream.finish()
        except MalformedAnalysis as malformed:
            reason = malformed.reason
        except ProviderStreamInterrupted:
            reason = "provider_interrupted"
        except ProviderError:
            reason = "providers_unavailable"
        if tail := censor.flush():
            summarised = True
            yield FieldChunk(summary=tail)

        if analysis is not None and labels is not None:
            yield FieldChunk(
                pain_points=[censor_text(p) for p in analysis.pain_points],
                preferences=[censor_text(p) for p in analysis.preferences],
                customer_context=local["customer_context"],
            )
            yield FieldChunk(recommendations=llm_recommendations(analysis, labels) or local["recommendations"])
            yield FieldChunk(degraded=False, degraded_reason=None, text_truncated=reading.truncated)
            return
        # The LLM did not finish a valid analysis: what it validated stays, the rest is local.
        if labels is None:
            _served_locally(config)
            yield _labels(local, provisional=False)
            recommendations = local["recommendations"]
        else:
            recommendations = fallback_recommendations(labels, context)
        yield FieldChunk(pain_points=local["pain_points"], preferences=local["preferences"],
                         customer_context=local["customer_context"])
        # A summary streams by appending: one the LLM left unfinished is followed by the
        # local one (marked), so the rep reads a whole summary either way.
        if not (summarised and stream.summary_complete):
            async for word in stream_words((INTERRUPTED_SUMMARY if summarised else "") + local["summary"]):
                yield FieldChunk(summary=word)
        yield FieldChunk(recommendations=recommendations)
        yield FieldChunk(degraded=True, degraded_reason=reason, text_truncated=reading.truncated)

    return field_streaming_chain("interaction_analysis", analyse, InteractionInput, InteractionAnalysis)
