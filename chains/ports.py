"""What the chains need from storage: types and protocols that the stores implement.

Chains depend on these, never on `app.store`; the app wires the real stores in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from chains.customer_context import PastInteraction

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Passage:
    document_id: str
    customer_id: str | None
    title: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Found:
    """What a search found, and the words that name the customer it was searched for
    (`chains.retrieval.subject_words`): the answer is judged without them too."""

    passages: list[Passage]
    subject: frozenset[str]


class KnowledgeSearch(Protocol):
    async def search(
        self, *, tenant_id: str, customer_id: str | None, query: str, k: int = 4, earlier: str | None = None
    ) -> list[Passage]: ...

    async def find(
        self, *, tenant_id: str, customer_id: str | None, query: str, k: int = 4, earlier: str | None = None
    ) -> Found: ...


@dataclass(frozen=True, slots=True)
class Conversation:
    """Whose memory a chat turn belongs to: a rep's session about one customer.

    The customer is part of it, so questions about one customer never reach a prompt
    about another, even in the same (or the default) session."""

    tenant_id: str
    user_id: str
    customer_id: str
    session_id: str


class Memory(Protocol):
    async def recent_turns(self, conversation: Conversation, *, limit: int = 8) -> list[tuple[str, str]]: ...

    async def append_turn(self, conversation: Conversation, *, question: str, answer: str) -> None: ...


class CpuRunner(Protocol):
    """Runs CPU-bound work off the event loop, accounted to a tenant (`app.core.cpu_pool`)."""

    async def run(self, tenant_id: str, fn: Callable[..., _T], /, *args: Any) -> _T: ...

    async def run_sized(self, tenant_id: str, size: int, fn: Callable[..., _T], /, *args: Any) -> _T:
        """As `run`, for a job whose cost grows with `size` (the characters of the text
        it reads): a small one may run in place."""
        ...


class InteractionHistory(Protocol):
    """A customer's earlier analysed interactions, newest first, within one tenant."""

    async def recent(self, tenant_id: str, customer_id: str, *, limit: int = 10) -> list[PastInteraction]: ...
