"""Whether an id the caller could not find in its own tenant exists in another one.

Only asked after a lookup in the caller's tenant came back empty (a 404, a new chat
session), and only off the request's path (`app.core.cross_tenant`): a legitimate call
never pays for it. Each question is one query on an index that starts with the id.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import Column, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.database import conversation_turns, documents, lead_scores, workflow_runs

# Audit runs are only listed, per tenant, so they have no entry; background runs do.
Resource = Literal["document", "lead", "chat_session", "workflow_run"]

_ID_COLUMNS: dict[Resource, Column[str]] = {
    "document": documents.c.document_id,
    "lead": lead_scores.c.lead_id,
    "chat_session": conversation_turns.c.session_id,
    "workflow_run": workflow_runs.c.run_id,
}


class ResourceOwnership:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def only_elsewhere(self, resource: Resource, tenant_id: str, resource_id: str) -> bool:
        """True when another tenant has `resource_id` and the caller's tenant has not."""
        column = _ID_COLUMNS[resource]
        table = column.table
        mine = exists().where(column == resource_id, table.c.tenant_id == tenant_id)
        theirs = exists().where(column == resource_id, table.c.tenant_id != tenant_id)
        async with self.engine.connect() as connection:
            return bool((await connection.execute(select(theirs & ~mine))).scalar())
