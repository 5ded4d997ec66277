"""A customer's right to see and to erase what the service holds, and a tenant's erasure.

One place knows every store that holds customer data: the database (documents,
chunks, conversations, interactions, lead scores and outcomes), the analysis cache and
the replayable events (Redis, or this process's memory), the sentiment history, the
in-memory retrieval index. Every export and erasure is itself on the audit trail.
An erasure that cannot reach a store (Redis away) fails with a retryable error rather
than report a job half done; running it again finishes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.core.analysis_cache import AnalysisCache
from app.core.auth import Principal
from app.crypto.keyring import Keyring
from app.realtime.alerts import SentimentHistory
from app.realtime.bus import EventBus
from app.realtime.events import Event, customer_channel, scoring_channel, workflow_channel
from app.store.audit import AuditLog
from app.store.customer_records import CustomerRecords
from app.store.knowledge import KnowledgeBase
from app.store.workflow_runs import WorkflowRuns

log = logging.getLogger(__name__)
RUN_STOP_WAIT_S = 5.0


def _is_lead(customer_id: str) -> Callable[[Event], bool]:
    """A score event of the lead with the customer's id (the CRM names both by one id)."""
    return lambda event: event.type == "score" and event.data.get("lead_id") == customer_id


@dataclass
class Privacy:
    records: CustomerRecords
    cache: AnalysisCache
    bus: EventBus
    sentiment: SentimentHistory
    knowledge: KnowledgeBase
    keys: Keyring
    redis_keys: Keyring | None
    audit: AuditLog
    workflow_runs: WorkflowRuns

    async def export_customer(self, principal: Principal, customer_id: str) -> dict[str, Any]:
        tenant_id = principal.tenant_id
        held = await self.records.export(tenant_id, customer_id)
        events = await self.bus.history(customer_channel(tenant_id, customer_id), "0-0")
        events += [event for event in await self.bus.history(scoring_channel(tenant_id), "0-0")
                   if _is_lead(customer_id)(event)]
        export = {
            "tenant_id": tenant_id,
            "customer_id": customer_id,
            "exported_at": datetime.now(UTC).isoformat(),
            **held,
            "cached_analyses": await self.cache.entries(tenant_id, customer_id),
            "events": [event.as_message() for event in events],
        }
        counts = {name: len(value) for name, value in export.items() if isinstance(value, list)}
        await self._audit(principal, "customer_exported", {"customer_id": customer_id, "records": counts})
        return export

    async def erase_customer(self, principal: Principal, customer_id: str) -> dict[str, int]:
        tenant_id = principal.tenant_id
        await self._stop_runs(tenant_id, customer_id)
        runs = await self.workflow_runs.ids_of_customer(tenant_id, customer_id)
        erased = await self.records.erase(tenant_id, customer_id)
        erased["workflow_event_channels"] = sum([await self.bus.erase(workflow_channel(tenant_id, run_id))
                                                 for run_id in runs])
        erased["cached_analyses"] = await self.cache.erase(tenant_id, customer_id)
        erased["event_channels"] = await self.bus.erase(customer_channel(tenant_id, customer_id))
        erased["score_events"] = await self.bus.erase_events(scoring_channel(tenant_id), _is_lead(customer_id))
        erased["sentiment_history"] = await self.sentiment.erase(tenant_id, customer_id)
        await self._audit(principal, "customer_erased", {"customer_id": customer_id, "erased": erased})
        return erased

    async def erase_tenant(self, principal: Principal, tenant_id: str) -> dict[str, int]:
        """Every row, cache entry and event of the tenant, then its data keys: whatever
        copy of its records survives (a backup, a replica's memory) no longer opens."""
        await self._stop_runs(tenant_id, None)
        erased = await self.records.erase_tenant(tenant_id)
        erased["cached_customers"] = await self.cache.erase(tenant_id)
        erased["event_channels"] = await self.bus.erase_tenant(tenant_id)
        erased["sentiment_history"] = await self.sentiment.erase(tenant_id)
        erased["data_keys"] = await self.keys.shred(tenant_id)
        if self.redis_keys is not None:
            erased["data_keys"] += await self.redis_keys.shred(tenant_id)
        self.knowledge.forget(tenant_id)
        await self._audit(principal, "tenant_erased", {"erased_tenant_id": tenant_id, "erased": erased})
        return erased

    async def _stop_runs(self, tenant_id: str, customer_id: str | None) -> None:
        """Background runs about the customer (or of the tenant) are stopped first, so none
        writes their data (a chat turn, an event) after the erasure; the replicas running
        them cancel them at their next sweep. Past `RUN_STOP_WAIT_S` the erasure goes on:
        a run that outlives its rows is stopped all the same, and its events erased."""
        if not await self.workflow_runs.cancel_all(tenant_id, customer_id):
            return
        deadline = asyncio.get_running_loop().time() + RUN_STOP_WAIT_S
        while await self.workflow_runs.active(tenant_id, customer_id):
            if asyncio.get_running_loop().time() > deadline:
                log.warning("erasing while background runs of tenant %s are still stopping", tenant_id)
                return
            await asyncio.sleep(0.05)

    async def _audit(self, principal: Principal, kind: str, detail: dict[str, Any]) -> None:
        """Awaited: the answer says done only once the record of it is durable."""
        await self.audit.security_event(tenant_id=principal.tenant_id, user_id=principal.user_id,
                                        run_id=None, kind=kind, detail=detail)


@dataclass
class RetentionSweeper:
    """Deletes what is past its retention period, every `every_s`, on every replica (the
    deletes are idempotent, so replicas need not agree who sweeps)."""

    records: CustomerRecords
    days: dict[str, int]  # kind of data → days kept; 0 keeps forever
    every_s: float
    _task: asyncio.Task[None] | None = None

    async def sweep(self) -> dict[str, int]:
        now = datetime.now(UTC)
        cutoffs = {kind: now - timedelta(days=days) for kind, days in self.days.items() if days > 0}
        return await self.records.purge(cutoffs) if cutoffs else {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="retention-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            try:
                purged = await self.sweep()
                if any(purged.values()):
                    log.info("retention purge: %s", purged)
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.exception("retention purge failed")
            await asyncio.sleep(self.every_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
