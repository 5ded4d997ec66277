"""Insights chat: answers about a customer from the tenant's own knowledge, with sources.

Sources go out first (the rep sees what the answer rests on at once), then the
answer streams; the question and the full answer join the session's memory only when
the answer completed, so a cancelled run leaves no half answer behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from chains.context import run_context
from chains.local.composer import compose_answer
from chains.ports import Conversation, CpuRunner, KnowledgeSearch, Memory
from chains.prompts import answer_messages
from chains.providers.router import ProviderRouter
from chains.censor import censored
from chains.safety import guarded
from chains.schemas import InsightsAnswer, InsightsQuestion
from chains.streaming import FieldChunk, field_streaming_chain


# Passages below this cosine similarity are noise for WordLlama's 256-d embeddings.
MIN_RELEVANCE = 0.1


def build_insights_chain(
    router: ProviderRouter, knowledge: KnowledgeSearch, memory: Memory, cpu: CpuRunner, *, top_k: int = 3
) -> Runnable[Any, Any]:
    async def answer(payload: dict[str, Any], config: RunnableConfig) -> AsyncIterator[dict[str, Any]]:
        identity = run_context(config).identity
        conversation = Conversation(identity.tenant_id, identity.user_id, payload["customer_id"],
                                    payload["session_id"])
        question = payload["question"]
        passages = [
            passage
            for passage in await knowledge.search(
                tenant_id=identity.tenant_id, customer_id=payload["customer_id"],
                query=question, k=top_k,
            )
            if passage.score >= MIN_RELEVANCE
        ]
        yield FieldChunk(
            session_id=payload["session_id"],
            sources=[
                {k: v for k, v in asdict(p).items() if k != "text"} for p in passages
            ],
        )
        # Stored turns re-enter the prompt: they pass the same guard as fresh text.
        history = [
            (role, guarded(content, source=f"memory:{role}", config=config))
            for role, content in await memory.recent_turns(conversation)
        ]
        asked = guarded(question, source="insights.question", config=config)
        # Titles reach the prompt too, so they pass the same guard as the text.
        sources = [
            (guarded(p.title, source=f"document_title:{p.document_id}", config=config),
             guarded(p.text, source=f"document:{p.document_id}", config=config))
            for p in passages
        ]
        cited = [(title.text, text.text) for title, text in sources]
        flagged = asked.flagged or any(g.flagged for pair in sources for g in pair) or any(
            g.flagged for _, g in history
        )
        prompt = answer_messages(asked.text, cited, [(role, g.text) for role, g in history], flagged=flagged)

        async def local() -> str:
            return await cpu.run(identity.tenant_id, compose_answer, asked.text, cited)

        parts: list[str] = []
        async for token in censored(router.astream_text(prompt, config=config, local=local)):
            parts.append(token)
            yield FieldChunk(answer=token)
        await memory.append_turn(conversation, question=question, answer="".join(parts))

    return field_streaming_chain("insights_chat", answer, InsightsQuestion, InsightsAnswer)
