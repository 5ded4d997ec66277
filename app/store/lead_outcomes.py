"""The outcomes a tenant records for its leads (won or lost): what its own model learns from.

Recordings are kept as they came (a lead lost in spring and won in autumn has both);
counts and training use each lead's latest outcome, so a lead counts once. A lead's
features describe a person or a business: they are sealed with the tenant's data key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.crypto.keyring import Keyring
from app.store.audit import utcnow
from app.store.database import finishes_once_started, lead_outcomes

Outcome = Literal["won", "lost"]
FeaturesFrom = Literal["request", "last_score"]
FEATURES = "lead_outcomes.features"


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    lead_id: str
    outcome: str
    features_from: str
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    leads: int
    won: int
    lost: int


@dataclass(frozen=True, slots=True)
class LabelledLead:
    lead_id: str
    won: bool
    features: dict[str, Any]
    outcome_id: int  # the recording learned from: a lead erased and recorded again is another


def _latest_ids(tenant_id: str) -> Any:
    """The id of each lead's latest recording in the tenant (the (tenant, lead, id) index)."""
    return (
        select(func.max(lead_outcomes.c.id))
        .where(lead_outcomes.c.tenant_id == tenant_id)
        .group_by(lead_outcomes.c.lead_id)
    )


class OutcomeLog:
    def __init__(self, engine: AsyncEngine, keys: Keyring) -> None:
        self.engine = engine
        self.keys = keys

    @finishes_once_started
    async def record(
        self, *, tenant_id: str, lead_id: str, outcome: Outcome, features: dict[str, Any],
        features_from: FeaturesFrom, user_id: str,
    ) -> RecordedOutcome:
        recorded = RecordedOutcome(lead_id, outcome, features_from, user_id, utcnow())
        sealed = (await self.keys.cipher(tenant_id)).seal_json(FEATURES, features)
        async with self.engine.begin() as connection:
            await connection.execute(insert(lead_outcomes).values(
                tenant_id=tenant_id, lead_id=lead_id, outcome=outcome, features=sealed,
                features_from=features_from, recorded_by=user_id, recorded_at=recorded.recorded_at,
            ))
        return recorded

    async def counts(self, tenant_id: str) -> OutcomeCounts:
        """Leads with an outcome, by their latest one."""
        statement = (
            select(lead_outcomes.c.outcome, func.count())
            .where((lead_outcomes.c.tenant_id == tenant_id) & lead_outcomes.c.id.in_(_latest_ids(tenant_id)))
            .group_by(lead_outcomes.c.outcome)
        )
        async with self.engine.connect() as connection:
            by_outcome = {outcome: count for outcome, count in (await connection.execute(statement)).all()}
        won, lost = int(by_outcome.get("won", 0)), int(by_outcome.get("lost", 0))
        return OutcomeCounts(won + lost, won, lost)

    async def labelled_leads(self, tenant_id: str, *, limit: int) -> list[LabelledLead]:
        """Each lead's latest outcome with its features: the `limit` most recently recorded."""
        statement = (
            select(lead_outcomes.c.lead_id, lead_outcomes.c.outcome, lead_outcomes.c.features, lead_outcomes.c.id)
            .where((lead_outcomes.c.tenant_id == tenant_id) & lead_outcomes.c.id.in_(_latest_ids(tenant_id)))
            .order_by(lead_outcomes.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        cipher = await self.keys.cipher(tenant_id)
        return [LabelledLead(lead_id, outcome == "won", cipher.open_json(FEATURES, features), outcome_id)
                for lead_id, outcome, features, outcome_id in rows]

    async def for_lead(self, tenant_id: str, lead_id: str, *, limit: int = 50) -> list[RecordedOutcome]:
        """The lead's recordings in this tenant, newest first."""
        statement = (
            select(lead_outcomes)
            .where((lead_outcomes.c.tenant_id == tenant_id) & (lead_outcomes.c.lead_id == lead_id))
            .order_by(lead_outcomes.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).mappings().all()
        return [RecordedOutcome(row["lead_id"], row["outcome"], row["features_from"], row["recorded_by"],
                                row["recorded_at"]) for row in rows]
