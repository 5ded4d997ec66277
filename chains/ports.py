"""What the chains need from storage: types and protocols that the stores implement.

Chains depend on these, never on `app.store`; the app wires the real stores in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Passage:
    document_id: str
    customer_id: str | None
    title: str
    text: str
    score: float


class KnowledgeSearch(Protocol):
    async def search(
        self, *, tenant_id: str, customer_id: str | None, query: str, k: int = 4
    ) -> list[Passage]: ...


class Memory(Protocol):
    async def recent_turns(
        self, *, tenant_id: str, user_id: str, session_id: str, limit: int = 8
    ) -> list[tuple[str, str]]: ...

    async def append_turn(
        self, *, tenant_id: str, user_id: str, session_id: str, question: str, answer: str
    ) -> None: ...
