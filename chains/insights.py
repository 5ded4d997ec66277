"""Insights chat: answers about a customer from the tenant's own knowledge, citing it.

The retrieved passages go out first as `sources` (the rep sees at once what the answer
may rest on), then the answer streams with its `[n]` citations checked as they pass
(`chains.citations`), and a last `sources` replaces the first with only the passages
the answer cites (none when nothing was found). The question and the full answer join
the session's memory only when the answer completed, so a cancelled run leaves no half
answer behind; the last question asked in the session guides retrieval for a follow-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from chains.censor import censored
from chains.citations import CitationCheck, quoted_markers
from chains.context import run_context
from chains.local.composer import compose_answer
from chains.ports import Conversation, CpuRunner, KnowledgeSearch, Memory, Passage
from chains.prompts import answer_messages
from chains.providers.router import ProviderRouter
from chains.safety import guarded
from chains.schemas import InsightsAnswer, InsightsQuestion
from chains.streaming import FieldChunk, field_streaming_chain

# Passages below this cosine similarity are noise for WordLlama's 256-d embeddings.
MIN_RELEVANCE = 0.1
PASSAGES = 4


def _source(passage: Passage, number: int) -> dict[str, Any]:
    return {"citation": number, "document_id": passage.document_id, "title": passage.title,
            "customer_id": passage.customer_id, "score": passage.score}


def _last_question(turns: list[tuple[str, str]]) -> str | None:
    return next((content for role, content in reversed(turns) if role == "human"), None)


def build_insights_chain(
    router: ProviderRouter, knowledge: KnowledgeSearch, memory: Memory, cpu: CpuRunner, *, top_k: int = PASSAGES
) -> Runnable[Any, Any]:
    async def answer(payload: dict[str, Any], config: RunnableConfig) -> AsyncIterator[dict[str, Any]]:
        identity = run_context(config).identity
        conversation = Conversation(identity.tenant_id, identity.user_id, payload["customer_id"],
                                    payload["session_id"])
        question = payload["question"]
        turns = await memory.recent_turns(conversation)
        earlier = _last_question(turns)
        found = await knowledge.find(
            tenant_id=identity.tenant_id, customer_id=payload["customer_id"], query=question, k=top_k, earlier=earlier)
        passages = [passage for passage in found.passages if passage.score >= MIN_RELEVANCE]
        yield FieldChunk(session_id=payload["session_id"],
                         sources=[_source(p, n) for n, p in enumerate(passages, start=1)])
        # Stored turns re-enter the prompt: they pass the same guard as fresh text.
        history = [(role, guarded(content, source=f"memory:{role}", config=config, replayed=True))
                   for role, content in turns]
        asked = guarded(question, source="insights.question", config=config)
        # Titles reach the prompt too, so they pass the same guard as the text. The
        # label tells the model whose document it is: the customer's own one wins.
        sources = [
            (guarded(p.title, source=f"document_title:{p.document_id}", config=config, replayed=True),
             guarded(p.text, source=f"document:{p.document_id}", config=config, replayed=True))
            for p in passages
        ]
        # (title, text, the customer's own): a document's own "[2]" reads "(2)", since in the
        # answer only a citation may be written [n].
        shown = [(title.text, quoted_markers(text.text), p.customer_id is not None)
                 for p, (title, text) in zip(passages, sources, strict=True)]
        labelled = [(f"{title} ({'this customer' if own else 'tenant-wide'})", text) for title, text, own in shown]
        flagged = asked.flagged or any(g.flagged for pair in sources for g in pair) or any(
            g.flagged for _, g in history
        )

        async def local() -> str:
            return await cpu.run(identity.tenant_id, compose_answer, asked.text, shown, earlier, found.subject)

        # Even without passages the model is asked: the conversation so far may answer.
        prompt = answer_messages(asked.text, labelled, [(role, g.text) for role, g in history], flagged=flagged)
        check = CitationCheck(len(passages))
        parts: list[str] = []
        try:
            async for token in censored(router.astream_text(prompt, config=config, local=local)):
                if text := check.feed(token):
                    parts.append(text)
                    yield FieldChunk(answer=text)
        except Exception:
            # The provider broke off: what it did send (a held-back space or "[1")
            # reaches the rep before the error event does.
            if text := check.close():
                yield FieldChunk(answer=text)
            raise
        if text := check.close():
            parts.append(text)
            yield FieldChunk(answer=text)
        yield FieldChunk(sources=[_source(passages[n - 1], n) for n in check.cited],
                         removed_citations=check.removed)
        await memory.append_turn(conversation, question=question, answer="".join(parts))

    return field_streaming_chain("insights_chat", answer, InsightsQuestion, InsightsAnswer)
