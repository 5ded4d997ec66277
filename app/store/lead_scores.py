"""Every lead score served, per tenant: what was scored, by which model version, when.

The features kept are the scoring input, so an outcome recorded later without the
lead's profile is learned from what the model saw when it scored that lead; the
reasoning kept is what the rep was shown. Writes are group-committed (scoring is the
hot path: a batch of a hundred leads is one transaction, not a hundred).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.store.audit import utcnow
from app.store.database import lead_scores
from app.store.group_commit import GroupCommitWriter
from chains.scoring.features import FACTORS


@dataclass(frozen=True, slots=True)
class StoredScore:
    lead_id: str
    score: int
    confidence: float
    model_version: str
    reasoning: list[dict[str, Any]]
    base_log_odds: float
    features: dict[str, Any]
    scored_at: datetime


def features_of(lead: dict[str, Any]) -> dict[str, Any]:
    """The scoring factors of a lead (missing ones as None), nothing else it carried."""
    return {factor: lead.get(factor) for factor in FACTORS}


async def _insert(connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    await connection.execute(insert(lead_scores), rows)


class ScoreLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._writer: GroupCommitWriter[dict[str, Any]] = GroupCommitWriter(engine, _insert, name="lead-score-writer")

    async def record(self, tenant_id: str, lead: dict[str, Any], output: dict[str, Any]) -> None:
        """Returns once the score is committed (with others queued at the same time)."""
        await self._writer.submit({
            "tenant_id": tenant_id,
            "lead_id": str(output["lead_id"]),
            "score": int(output["score"]),
            "confidence": float(output["confidence"]),
            "model_version": str(output["model_version"]),
            "features": features_of(lead),
            "explanation": {"reasoning": output["reasoning"], "base_log_odds": output["base_log_odds"]},
            "scored_at": utcnow(),
        })

    async def history(self, tenant_id: str, lead_id: str, *, limit: int = 50) -> list[StoredScore]:
        """The lead's scores in this tenant, newest first."""
        statement = (
            select(lead_scores)
            .where((lead_scores.c.tenant_id == tenant_id) & (lead_scores.c.lead_id == lead_id))
            .order_by(lead_scores.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [
            StoredScore(
                lead_id=row["lead_id"], score=row["score"], confidence=row["confidence"],
                model_version=row["model_version"], reasoning=row["explanation"]["reasoning"],
                base_log_odds=row["explanation"]["base_log_odds"], features=row["features"],
                scored_at=row["scored_at"],
            )
            for row in rows
        ]

    async def latest(self, tenant_id: str, lead_id: str) -> StoredScore | None:
        found = await self.history(tenant_id, lead_id, limit=1)
        return found[0] if found else None

    async def close(self) -> None:
        await self._writer.close()
