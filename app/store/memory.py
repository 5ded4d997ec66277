"""Conversation memory per tenant, user and session, durable across restarts."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.database import conversation_messages as messages


class ConversationMemory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def recent_turns(
        self, *, tenant_id: str, user_id: str, session_id: str, limit: int = 8
    ) -> list[tuple[str, str]]:
        statement = (
            select(messages.c.role, messages.c.content)
            .where(
                (messages.c.tenant_id == tenant_id)
                & (messages.c.user_id == user_id)
                & (messages.c.session_id == session_id)
            )
            .order_by(messages.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [(row.role, row.content) for row in reversed(rows)]

    async def append_turn(
        self, *, tenant_id: str, user_id: str, session_id: str, question: str, answer: str
    ) -> None:
        base = {"tenant_id": tenant_id, "user_id": user_id, "session_id": session_id}
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(messages),
                [{**base, "role": "human", "content": question}, {**base, "role": "ai", "content": answer}],
            )
