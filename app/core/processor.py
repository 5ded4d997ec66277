"""The real-time processor: admission, degradation and delivery around every chain run.

`RealtimeProcessor` owns the per-provider schedulers, the analysis cache, the event
bus and the sentiment history; `ManagedChain` (app.core.managed_chain) consults it for
each run, whichever LangServe endpoint started that run.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from redis.asyncio import Redis

from app.core.analysis_cache import AnalysisCache
from app.core.cluster_slots import ClusterSlots
from app.core.metrics import EVENTS_PUBLISHED, QUEUE_DEPTH, RUNNING
from app.core.scheduler import Priority, Scheduler
from app.realtime.alerts import SentimentHistory, sentiment_alert
from app.realtime.bus import EventBus
from app.realtime.events import Event, customer_channel, scoring_channel
from app.store.audit import AuditLog
from chains.context import RunIdentity

log = logging.getLogger(__name__)

# Slots per process for the primary provider: the local model is a few milliseconds of
# CPU per run, remote LLMs are bounded by what their rate limits tolerate.
DEFAULT_CONCURRENCY = {"local": 64, "openai": 16, "anthropic": 16, "google": 16}


def priority_of(payload: dict[str, Any]) -> Priority:
    if payload.get("customer_tier") == "high_value" or payload.get("time_sensitive"):
        return "high"
    return "standard"


class RealtimeProcessor:
    def __init__(
        self,
        *,
        provider: str,
        max_concurrency: int | None,
        queue_max_size: int,
        deadline_s: float,
        bus: EventBus,
        cache: AnalysisCache,
        sentiment_history: SentimentHistory,
        audit: AuditLog,
        redis: Redis | None = None,
        cluster_max_concurrency: int | None = None,
        cluster_lease_ttl_s: float = 10.0,
    ) -> None:
        self.provider = provider
        self.audit = audit
        self.deadline_s = deadline_s
        self.bus = bus
        self.cache = cache
        self.sentiment_history = sentiment_history

        def export(waiting: int, running: int) -> None:
            QUEUE_DEPTH.labels(provider).set(waiting)
            RUNNING.labels(provider).set(running)

        self.scheduler = Scheduler(
            max_concurrency or DEFAULT_CONCURRENCY.get(provider, 16),
            queue_max_size=queue_max_size,
            on_change=export,
            # A provider's rate limit is one number for all replicas, so it is shared
            # through Redis when there is one; without Redis each process has only its own.
            cluster=ClusterSlots(redis, provider=provider, limit=cluster_max_concurrency,
                                 lease_ttl_s=cluster_lease_ttl_s)
            if redis is not None and cluster_max_concurrency is not None else None,
        )
        export(0, 0)

    async def close(self) -> None:
        await self.scheduler.close()

    async def publish_interaction(
        self, identity: RunIdentity, payload: dict[str, Any], output: dict[str, Any]
    ) -> list[Event]:
        """Pushes a finished analysis to its customer's watchers, plus an alert on a sharp drop."""
        customer_id = payload["customer_id"]
        channel = customer_channel(identity.tenant_id, customer_id)
        data = {**output, "channel": payload["channel"]}
        events = [await self._publish(channel, "insight", identity, data, customer_id)]
        sentiment = output.get("sentiment")
        if sentiment is not None:
            previous = await self.sentiment_history.swap(identity.tenant_id, customer_id, sentiment["score"])
            alert = sentiment_alert(previous, sentiment)
            if alert is not None:
                events.append(await self._publish(channel, "alert", identity, alert, customer_id))
        return events

    async def publish_score(self, identity: RunIdentity, output: dict[str, Any]) -> Event:
        return await self._publish(scoring_channel(identity.tenant_id), "score", identity, output, None)

    async def _publish(
        self,
        channel: str,
        type_: Literal["insight", "score", "alert"],
        identity: RunIdentity,
        data: dict[str, Any],
        customer_id: str | None,
    ) -> Event:
        event = await self.bus.publish(
            channel, type=type_, tenant_id=identity.tenant_id, data=data, customer_id=customer_id
        )
        EVENTS_PUBLISHED.labels(type_).inc()
        return event
