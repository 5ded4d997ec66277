"""What the database holds about one customer, or one tenant: read out and erased.

Rows are found by the customer id (documents, chunks, conversation turns,
interactions) and by a lead of the same id (scores and outcomes: the CRM names a
person or business by one id). The audit trail (`ai_runs`, `security_events`) is not
erased here: it records what was done, holds no customer text in clear, and is
chained (`python -m app audit verify`); a tenant's erasure destroys the keys its
sealed details need.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.crypto.envelope import TenantCipher
from app.crypto.keyring import Keyring
from app.store import interactions as interaction_log, knowledge, lead_outcomes as outcome_log, lead_scores as score_log
from app.store import memory
from app.store import workflow_runs as workflow_log
from app.store.database import (
    conversation_turns,
    customer_interactions,
    document_chunks,
    documents,
    lead_outcomes,
    lead_scores,
    scoring_models,
    workflow_runs,
)
from app.store.scoring_models import replace_out_of_fold

# Every table of customer content, with the column a customer is found by. Erasing a
# tenant also clears the tables of what it derived (models, the index revision).
BY_CUSTOMER: dict[str, tuple[Table, str]] = {
    "documents": (documents, "customer_id"),
    "document_chunks": (document_chunks, "customer_id"),
    "conversation_turns": (conversation_turns, "customer_id"),
    "interactions": (customer_interactions, "customer_id"),
    "lead_scores": (lead_scores, "lead_id"),
    "lead_outcomes": (lead_outcomes, "lead_id"),
    "workflow_runs": (workflow_runs, "customer_id"),  # a scoring run's lead id is kept there too
}
TENANT_TABLES: tuple[Table, ...] = (*(table for table, _ in BY_CUSTOMER.values()), scoring_models)
# Retention: which table a kind of data lives in, and the column its age is read from.
RETAINED: dict[str, tuple[Table, str]] = {
    "conversation": (conversation_turns, "created_at"),
    "interactions": (customer_interactions, "created_at"),
    "lead_scores": (lead_scores, "scored_at"),
    "workflows": (workflow_runs, "created_at"),
}


# A tenant's model versions keep, per lead they were trained on, the probability a fit
# that never saw the lead gave it (for comparing versions): the customer's too.
MODEL_PREDICTIONS = "scoring_model_predictions"


async def _models_trained_on(
    connection: AsyncConnection, tenant_id: str, customer_id: str, *, to_change: bool = False
) -> list[tuple[int, dict[str, Any]]]:
    """(version, its out-of-fold map) of each of the tenant's versions trained on the
    customer; `to_change` locks the rows, so two erasures at once cannot each write back
    a map that still holds the other's customer."""
    statement = select(scoring_models.c.version, scoring_models.c.out_of_fold).where(
        scoring_models.c.tenant_id == tenant_id).order_by(scoring_models.c.version)
    rows = (await connection.execute(statement.with_for_update() if to_change else statement)).all()
    return [(row.version, row.out_of_fold) for row in rows if customer_id in row.out_of_fold]


def _where(table: Table, column: str, tenant_id: str, customer_id: str) -> Any:
    return (table.c.tenant_id == tenant_id) & (table.c[column] == customer_id)


# The sealed columns of each table (purpose, and whether the plaintext is JSON).
SEALED: dict[str, dict[str, tuple[str, bool]]] = {
    "documents": {"title": (knowledge.TITLE, False), "text": (knowledge.TEXT, False)},
    "conversation_turns": {"content": (memory.PURPOSE, False)},
    "interactions": {"summary": (interaction_log.PURPOSE, False)},
    "lead_scores": {"features": (score_log.FEATURES, True), "explanation": (score_log.EXPLANATION, True)},
    "lead_outcomes": {"features": (outcome_log.FEATURES, True)},
    "workflow_runs": {"input": (workflow_log.INPUT, True), "output": (workflow_log.OUTPUT, True)},
}


def _opened(cipher: TenantCipher, name: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row as the customer should read it: sealed columns opened, the tenant left out."""
    row = {key: value for key, value in row.items() if key != "tenant_id"}
    for column, (purpose, is_json) in SEALED.get(name, {}).items():
        if row[column] is None:  # a run that has no output yet
            continue
        row[column] = cipher.open_json(purpose, row[column]) if is_json else cipher.open_text(purpose, row[column])
    return row


class CustomerRecords:
    def __init__(self, engine: AsyncEngine, keys: Keyring) -> None:
        self.engine = engine
        self.keys = keys

    async def export(self, tenant_id: str, customer_id: str) -> dict[str, list[dict[str, Any]]]:
        cipher = await self.keys.cipher(tenant_id)
        found: dict[str, list[dict[str, Any]]] = {}
        async with self.engine.connect() as connection:
            for name, (table, column) in BY_CUSTOMER.items():
                if name == "document_chunks":
                    continue  # the documents themselves are exported whole
                rows = (await connection.execute(
                    select(table).where(_where(table, column, tenant_id, customer_id))
                )).mappings().all()
                found[name] = [_opened(cipher, name, dict(row)) for row in rows]
            found[MODEL_PREDICTIONS] = [
                {"model_version": version, "out_of_fold_probability": out_of_fold[customer_id]}
                for version, out_of_fold in await _models_trained_on(connection, tenant_id, customer_id)
            ]
        return found

    async def erase(self, tenant_id: str, customer_id: str) -> dict[str, int]:
        """One transaction: the customer is gone from every table, or from none."""
        erased: dict[str, int] = {}
        async with self.engine.begin() as connection:
            for name, (table, column) in BY_CUSTOMER.items():
                result = await connection.execute(delete(table).where(_where(table, column, tenant_id, customer_id)))
                erased[name] = result.rowcount
            if erased["documents"] or erased["document_chunks"]:
                await knowledge.bump_revision(connection, tenant_id)  # every replica drops them from its index
            trained_on = await _models_trained_on(connection, tenant_id, customer_id, to_change=True)
            for version, out_of_fold in trained_on:
                await replace_out_of_fold(connection, tenant_id, version,
                                          {lead: p for lead, p in out_of_fold.items() if lead != customer_id})
            erased[MODEL_PREDICTIONS] = len(trained_on)
        return erased

    async def erase_tenant(self, tenant_id: str) -> dict[str, int]:
        erased: dict[str, int] = {}
        async with self.engine.begin() as connection:
            for table in TENANT_TABLES:
                erased[table.name] = (await connection.execute(delete(table).where(table.c.tenant_id == tenant_id))).rowcount
            # Bumped, not deleted: a revision that started again at 1 could match the one a
            # replica's stale index was built at, and it would go on answering from it.
            await knowledge.bump_revision(connection, tenant_id)
        return erased

    async def purge(self, older_than: dict[str, datetime]) -> dict[str, int]:
        """Deletes rows past their kind's retention (`older_than`: kind → cutoff), all tenants."""
        purged: dict[str, int] = {}
        async with self.engine.begin() as connection:
            for kind, cutoff in older_than.items():
                table, column = RETAINED[kind]
                purged[kind] = (await connection.execute(delete(table).where(table.c[column] < cutoff))).rowcount
        return purged
