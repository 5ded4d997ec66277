"""Each tenant's own scoring models, versioned: parameters as JSON, metrics, out-of-fold predictions.

Versions are numbered per tenant (1, 2, ...; named `tenant-v<n>`), and the newest one
is the tenant's active model. Replicas learn of a new one by reading the newest number
(`newest`: one read of the primary key) every few seconds, and load its parameters
only when the number changed. Only the newest `keep` versions are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.store.audit import utcnow
from app.store.database import finishes_once_started, lead_outcomes, scoring_models

VERSION_PREFIX = "tenant-v"


def version_name(number: int) -> str:
    return f"{VERSION_PREFIX}{number}"


@dataclass(frozen=True, slots=True)
class ModelHead:
    number: int
    outcomes_total: int  # leads with an outcome when it was trained


@dataclass(frozen=True, slots=True)
class StoredModelInfo:
    number: int
    name: str
    prior: str
    training_size: int
    metrics: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredModel:
    info: StoredModelInfo
    params: dict[str, Any]
    out_of_fold: dict[str, float | None]


_INFO = (scoring_models.c.version, scoring_models.c.name, scoring_models.c.prior, scoring_models.c.training_size,
         scoring_models.c.metrics, scoring_models.c.created_at)


def _info(row: Any) -> StoredModelInfo:
    return StoredModelInfo(row.version, row.name, row.prior, row.training_size, row.metrics, row.created_at)


class ModelRegistry:
    def __init__(self, engine: AsyncEngine, *, keep: int = 10) -> None:
        self.engine = engine
        self.keep = keep

    async def newest(self, tenant_id: str) -> ModelHead | None:
        statement = (
            select(scoring_models.c.version, scoring_models.c.outcomes_total)
            .where(scoring_models.c.tenant_id == tenant_id)
            .order_by(scoring_models.c.version.desc())
            .limit(1)
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement)).first()
        return None if row is None else ModelHead(row.version, row.outcomes_total)

    async def params(self, tenant_id: str, number: int) -> dict[str, Any] | None:
        statement = select(scoring_models.c.params).where(
            (scoring_models.c.tenant_id == tenant_id) & (scoring_models.c.version == number))
        async with self.engine.connect() as connection:
            params: dict[str, Any] | None = (await connection.execute(statement)).scalar_one_or_none()
        return params

    async def by_name(self, tenant_id: str, name: str) -> StoredModel | None:
        statement = select(*_INFO, scoring_models.c.params, scoring_models.c.out_of_fold).where(
            (scoring_models.c.tenant_id == tenant_id) & (scoring_models.c.name == name))
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement)).first()
        return None if row is None else StoredModel(_info(row), row.params, row.out_of_fold)

    async def list(self, tenant_id: str) -> list[StoredModelInfo]:
        """The tenant's versions, newest first (without their parameters)."""
        statement = (select(*_INFO).where(scoring_models.c.tenant_id == tenant_id)
                     .order_by(scoring_models.c.version.desc()))
        async with self.engine.connect() as connection:
            return [_info(row) for row in (await connection.execute(statement)).all()]

    @finishes_once_started
    async def add(
        self, *, tenant_id: str, number: int, prior: str, params: dict[str, Any], out_of_fold: dict[str, float | None],
        learned_from: dict[str, int], training_size: int, outcomes_total: int, metrics: dict[str, Any],
    ) -> StoredModelInfo | None:
        """Stores version `number`, trained on the outcome recordings `learned_from` (lead
        id → recording id); None if that number was taken meanwhile (another replica
        trained at the same moment: its model serves, ours is dropped) or the tenant was
        erased meanwhile."""
        created_at = utcnow()
        try:
            async with self.engine.begin() as connection:
                await connection.execute(insert(scoring_models).values(
                    tenant_id=tenant_id, version=number, name=version_name(number), prior=prior, params=params,
                    out_of_fold=out_of_fold, training_size=training_size, outcomes_total=outcomes_total, metrics=metrics,
                    created_at=created_at,
                ))
                await _without_erased_leads(connection, tenant_id, number, out_of_fold, learned_from)
                await connection.execute(delete(scoring_models).where(
                    (scoring_models.c.tenant_id == tenant_id) & (scoring_models.c.version <= number - self.keep)))
        except (IntegrityError, _TenantErased):
            return None
        return StoredModelInfo(number, version_name(number), prior, training_size, metrics, created_at)


class _TenantErased(Exception):
    """Every outcome the model learned from is gone: the tenant was erased meanwhile."""


async def _without_erased_leads(
    connection: AsyncConnection, tenant_id: str, number: int, out_of_fold: dict[str, float | None],
    learned_from: dict[str, int],
) -> None:
    """A lead erased while the model trained (`app.store.customer_records`) has lost the
    recording the model learned from (even if the lead was recorded again since), and a
    prediction for it here would be its data stored again; a tenant erased meanwhile has
    none left, and the version is not stored (`_TenantErased`).

    Read after the insert. On SQLite the insert holds the write lock, so no erasure
    commits in between. On PostgreSQL the leads' outcomes are locked for share: an
    erasure that deleted one first is waited for, and one that comes after waits for
    this commit, then (each statement seeing what was committed before it, as READ
    COMMITTED, the engine's level, has it) finds this version and takes its lead out."""
    recordings = list(learned_from.values())
    held: set[str] = set()
    for start in range(0, len(recordings), 1_000):
        held.update((await connection.execute(
            select(lead_outcomes.c.lead_id).where(
                (lead_outcomes.c.tenant_id == tenant_id) & lead_outcomes.c.id.in_(recordings[start:start + 1_000])
            ).with_for_update(read=True)
        )).scalars())
    if recordings and not held:
        raise _TenantErased(tenant_id)
    kept = {lead: p for lead, p in out_of_fold.items() if lead in held}
    if len(kept) < len(out_of_fold):
        await replace_out_of_fold(connection, tenant_id, number, kept)


async def replace_out_of_fold(
    connection: AsyncConnection, tenant_id: str, number: int, out_of_fold: dict[str, float | None]
) -> None:
    """Version `number`'s out-of-fold map, without the leads an erasure took out."""
    await connection.execute(update(scoring_models).where(
        (scoring_models.c.tenant_id == tenant_id) & (scoring_models.c.version == number)
    ).values(out_of_fold=out_of_fold))
