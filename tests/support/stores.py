"""The real stores on a throwaway SQLite file, for tests that run chains in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from app.crypto.envelope import MasterKeys
from app.crypto.keyring import Keyring
from app.store.data_keys import SqlDataKeyStore
from app.store.database import create_engine, database_url, migrate
from app.store.interactions import InteractionLog
from app.store.knowledge import KnowledgeBase


TEST_MASTER_KEY = "a-test-master-key-that-is-long-enough-0123"


def keyring_for(engine: AsyncEngine) -> Keyring:
    """The real keyring on the test's database, under a fixed test master key."""
    return Keyring(MasterKeys(TEST_MASTER_KEY), SqlDataKeyStore(engine))


@asynccontextmanager
async def sqlite_keyring(directory: Path) -> AsyncIterator[Keyring]:
    """For stores that keep no rows in SQL themselves (Redis ones): their keys still do."""
    engine = create_engine(database_url(None, directory / "keys.sqlite3"))
    await migrate(engine)
    try:
        yield keyring_for(engine)
    finally:
        await engine.dispose()


@dataclass
class Stores:
    interactions: InteractionLog
    knowledge: KnowledgeBase


@asynccontextmanager
async def sqlite_stores(directory: Path) -> AsyncIterator[Stores]:
    engine = create_engine(database_url(None, directory / "stores.sqlite3"))
    await migrate(engine)
    try:
        keys = keyring_for(engine)
        stores = Stores(InteractionLog(engine, keys), KnowledgeBase(engine, keys))
        try:
            yield stores
        finally:
            await stores.interactions.close()
    finally:
        await engine.dispose()
