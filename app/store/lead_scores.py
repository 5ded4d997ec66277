"""Every lead score served, per tenant: what was scored, by which model version, when.

The features kept are the scoring input, so an outcome recorded later without the
lead's profile is learned from what the model saw when it scored that lead; the
reasoning kept is what the rep was shown. Writes are group-committed (scoring is the
hot path: a batch of a hundred leads is one transaction, not a hundred). Features and
reasoning describe the lead: both are sealed with the tenant's data key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.crypto.keyring import Keyring
from app.store.audit import utcnow
from app.store.database import lead_scores
from app.store.group_commit import GroupCommitWriter
from chains.scoring.features import FACTORS

FEATURES, EXPLANATION = "lead_scores.features", "lead_scores.explanation"


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


def _insert(connection: Connection, rows: list[dict[str, Any]]) -> None:
    connection.execute(insert(lead_scores), rows)


class ScoreLog:
    def __init__(self, engine: AsyncEngine, keys: Keyring) -> None:
        self.engine = engine
        self.keys = keys
        self._writer: GroupCommitWriter[dict[str, Any]] = GroupCommitWriter(engine, _insert, name="lead-score-writer")

    async def record(self, tenant_id: str, lead: dict[str, Any], output: dict[str, Any]) -> None:
        """Returns once the score is committed (with others queued at the same time)."""
        cipher = await self.keys.cipher(tenant_id)
        explanation = {"reasoning": output["reasoning"], "base_log_odds": output["base_log_odds"]}
        await self._writer.submit({
            "tenant_id": tenant_id,
            "lead_id": str(output["lead_id"]),
            "score": int(output["score"]),
            "confidence": float(output["confidence"]),
            "model_version": str(output["model_version"]),
            "features": cipher.seal_json(FEATURES, features_of(lead)),
            "explanation": cipher.seal_json(EXPLANATION, explanation),
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
        cipher = await self.keys.cipher(tenant_id)
        return [self._stored(row, cipher.open_json(EXPLANATION, row["explanation"]),
                             cipher.open_json(FEATURES, row["features"])) for row in rows]

    @staticmethod
    def _stored(row: Any, explanation: dict[str, Any], features: dict[str, Any]) -> StoredScore:
        return StoredScore(
            lead_id=row["lead_id"], score=row["score"], confidence=row["confidence"],
            model_version=row["model_version"], reasoning=explanation["reasoning"],
            base_log_odds=explanation["base_log_odds"], features=features, scored_at=row["scored_at"],
        )

    async def latest(self, tenant_id: str, lead_id: str) -> StoredScore | None:
        found = await self.history(tenant_id, lead_id, limit=1)
        return found[0] if found else None

    async def close(self) -> None:
        await self._writer.close()
