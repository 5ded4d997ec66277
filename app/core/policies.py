"""Per chain: what it answers when it cannot get a slot in time (`Fallback`), and
what happens to its finished output (`Delivery`). See `app.core.managed_chain`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from app.core.analysis_cache import CacheQuery, describe
from app.core.cpu_pool import FairCpuPool
from app.core.metrics import CACHE_LOOKUPS
from app.core.processor import RealtimeProcessor
from app.store.interactions import InteractionLog
from app.store.lead_scores import ScoreLog
from chains.context import RunIdentity
from chains.streaming import FieldChunk


def _mark_degraded(chunk: Any, reason: str) -> Any:
    if isinstance(chunk, dict) and "degraded" in chunk:
        return FieldChunk({**chunk, "degraded": True, "degraded_reason": reason})
    return chunk


@dataclass
class InteractionPolicy:
    """Under overload: this customer's cached analysis of the same message (exact, or
    similar with the same meaning signature, see `app.core.analysis_cache`), else the
    fast local analysis of this message. Finished analyses are published and cached."""

    processor: RealtimeProcessor
    local_chain: Runnable[Any, Any]
    cpu: FairCpuPool
    history: InteractionLog

    async def _described(self, identity: RunIdentity, payload: dict[str, Any]) -> CacheQuery:
        """The message as the cache looks it up and stores it (in place when short)."""
        return await self.cpu.run_sized(identity.tenant_id, len(str(payload["text"])), describe, payload)

    async def degraded(
        self, payload: dict[str, Any], config: RunnableConfig, identity: RunIdentity, cause: str
    ) -> AsyncIterator[Any]:
        query = await self._described(identity, payload)
        hit = await self.processor.cache.get(identity.tenant_id, query)
        CACHE_LOOKUPS.labels(hit.kind if hit else "miss").inc()
        if hit is not None:
            reason = f"{cause}:cache_{hit.kind}"
            cached = {k: v for k, v in hit.output.items() if k not in ("degraded", "degraded_reason")}
            yield FieldChunk(**cached, degraded=True, degraded_reason=reason,
                              cache_similarity=hit.similarity, cached_from=hit.cached_from)
            return
        async for chunk in self.local_chain.astream(payload, config):
            yield _mark_degraded(chunk, f"{cause}:local_analysis")

    async def on_complete(
        self, identity: RunIdentity, payload: dict[str, Any], output: Any, degraded: bool
    ) -> None:
        await self.processor.publish_interaction(identity, payload, dict(output))
        await self.history.record(identity.tenant_id, payload["customer_id"], payload["channel"], dict(output))
        if not degraded:
            query = await self._described(identity, payload)
            await self.processor.cache.put(identity.tenant_id, query, dict(output))


@dataclass
class InsightsPolicy:
    """Under overload, the local model answers from the same retrieved sources."""

    local_chain: Runnable[Any, Any]

    async def degraded(
        self, payload: dict[str, Any], config: RunnableConfig, identity: RunIdentity, cause: str
    ) -> AsyncIterator[Any]:
        async for chunk in self.local_chain.astream(payload, config):
            yield chunk
        yield FieldChunk(degraded=True, degraded_reason=f"{cause}:local_model")

    async def on_complete(
        self, identity: RunIdentity, payload: dict[str, Any], output: Any, degraded: bool
    ) -> None:
        return None


@dataclass
class ScoringDelivery:
    """Every score is stored for its tenant (lead, features, score, confidence, model
    version, time: what an outcome recorded later learns from) and published to the
    tenant's scoring channel. The store is group-committed and awaited before the answer
    completes, so a client that records an outcome right after a score finds it.
    Scoring is milliseconds of local CPU, so it has no fallback and never waits for a slot."""

    processor: RealtimeProcessor
    scores: ScoreLog

    async def on_complete(
        self, identity: RunIdentity, payload: dict[str, Any], output: Any, degraded: bool
    ) -> None:
        try:
            await self.scores.record(identity.tenant_id, payload, dict(output))
        finally:
            await self.processor.publish_score(identity, dict(output))
