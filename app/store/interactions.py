"""Every analysed interaction of a customer, per tenant: the history the next analysis
reads (issues this week, sentiment trend, recent summaries). Summaries quote the
customer, so they are sealed with the tenant's data key; labels and scores are not.

Writes are group-committed (`app.store.group_commit`): a hundred streams finishing at
once are a few transactions, not a hundred competing for SQLite's one write lock (which
lost some of them under load: `bench/stream_bench.py`), and a failed write is retried."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.crypto.keyring import Keyring
from app.store.audit import utcnow
from app.store.database import customer_interactions as interactions
from app.store.group_commit import GroupCommitWriter
from chains.customer_context import PastInteraction

PURPOSE = "customer_interactions.summary"


async def _insert(connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    await connection.execute(insert(interactions), rows)


class InteractionLog:
    def __init__(self, engine: AsyncEngine, keys: Keyring) -> None:
        self.engine = engine
        self.keys = keys
        self._writer: GroupCommitWriter[dict[str, Any]] = GroupCommitWriter(engine, _insert, name="interaction-writer")

    async def record(self, tenant_id: str, customer_id: str, channel: str, analysis: dict[str, Any],
                     at: datetime | None = None) -> None:
        """Returns once the row is committed; a caller cancelled meanwhile does not cancel it."""
        sentiment = analysis.get("sentiment") or {}
        summary = (await self.keys.cipher(tenant_id)).seal_text(PURPOSE, str(analysis.get("summary", ""))[:500])
        await self._writer.submit({
            "tenant_id": tenant_id, "customer_id": customer_id, "created_at": at or utcnow(), "channel": channel,
            "sentiment_label": str(sentiment.get("label", "neutral")),
            "sentiment_score": float(sentiment.get("score", 0.0)),
            "intent": str(analysis.get("intent", "general_inquiry")), "urgency": str(analysis.get("urgency", "low")),
            "automated": bool(analysis.get("automated", False)), "summary": summary,
        })

    async def close(self) -> None:
        await self._writer.close()

    async def recent(self, tenant_id: str, customer_id: str, *, limit: int = 10) -> list[PastInteraction]:
        statement = (
            select(interactions)
            .where((interactions.c.tenant_id == tenant_id) & (interactions.c.customer_id == customer_id))
            .order_by(interactions.c.created_at.desc(), interactions.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        cipher = await self.keys.cipher(tenant_id)
        return [
            PastInteraction(row["created_at"], row["channel"], row["sentiment_label"], row["sentiment_score"],
                            row["intent"], row["urgency"], row["automated"], cipher.open_text(PURPOSE, row["summary"]))
            for row in rows
        ]
