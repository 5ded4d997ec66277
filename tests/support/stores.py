"""The real stores on a throwaway SQLite file, for tests that run chains in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from app.store.database import create_engine, database_url, migrate
from app.store.interactions import InteractionLog
from app.store.knowledge import KnowledgeBase


@dataclass
class Stores:
    interactions: InteractionLog
    knowledge: KnowledgeBase


@asynccontextmanager
async def sqlite_stores(directory: Path) -> AsyncIterator[Stores]:
    engine = create_engine(database_url(None, directory / "stores.sqlite3"))
    await migrate(engine)
    try:
        yield Stores(InteractionLog(engine), KnowledgeBase(engine))
    finally:
        await engine.dispose()
