"""Conversation memory per tenant, user, customer and session, durable across restarts.

Turns are sealed with the tenant's data key (`app.crypto`): the database holds no text."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.crypto.keyring import Keyring
from app.store.database import conversation_turns as turns, finishes_once_started
from chains.ports import Conversation

PURPOSE = "conversation_turns.content"


class ConversationMemory:
    def __init__(self, engine: AsyncEngine, keys: Keyring) -> None:
        self.engine = engine
        self.keys = keys

    async def recent_turns(self, conversation: Conversation, *, limit: int = 8) -> list[tuple[str, str]]:
        statement = (
            select(turns.c.role, turns.c.content)
            .where(
                (turns.c.tenant_id == conversation.tenant_id)
                & (turns.c.user_id == conversation.user_id)
                & (turns.c.customer_id == conversation.customer_id)
                & (turns.c.session_id == conversation.session_id)
            )
            .order_by(turns.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        cipher = await self.keys.cipher(conversation.tenant_id)
        return [(row.role, cipher.open_text(PURPOSE, row.content)) for row in reversed(rows)]

    @finishes_once_started
    async def append_turn(self, conversation: Conversation, *, question: str, answer: str) -> None:
        cipher = await self.keys.cipher(conversation.tenant_id)
        base = {"tenant_id": conversation.tenant_id, "user_id": conversation.user_id,
                "customer_id": conversation.customer_id, "session_id": conversation.session_id}
        async with self.engine.begin() as connection:
            await connection.execute(
                insert(turns),
                [{**base, "role": "human", "content": cipher.seal_text(PURPOSE, question)},
                 {**base, "role": "ai", "content": cipher.seal_text(PURPOSE, answer)}],
            )
