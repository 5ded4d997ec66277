"""The embedded SQLite pool (`app.store.database.create_engine`) takes back a connection
without a rollback round trip when nothing is open on it (each was a hop through
aiosqlite's thread on every read and write), and never hands on an open transaction."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest
from sqlalchemy import text

from app.store.database import create_engine, database_url


@pytest.fixture
def rollbacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every rollback the driver is asked for (SQLAlchemy's or the pool's)."""
    calls: list[int] = []
    original = aiosqlite.Connection.rollback

    async def counted(self: aiosqlite.Connection) -> None:
        calls.append(1)
        await original(self)

    monkeypatch.setattr(aiosqlite.Connection, "rollback", counted)
    return calls


async def test_committed_and_read_only_connections_return_without_a_rollback(tmp_path: Path, rollbacks: list[int]) -> None:
    engine = create_engine(database_url(None, tmp_path / "pool.sqlite3"))
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE notes (body TEXT)"))
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO notes VALUES ('a')"))
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 1
    await engine.dispose()
    assert rollbacks == [], "a connection with nothing open was rolled back on its way to the pool"


async def test_a_connection_returned_mid_transaction_is_rolled_back(tmp_path: Path, rollbacks: list[int]) -> None:
    engine = create_engine(database_url(None, tmp_path / "pool.sqlite3"), pool_size=1, max_overflow=0,
                           pool_timeout_s=1.0)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE notes (body TEXT)"))
    async with engine.connect() as connection:  # writes, then goes back without a commit
        await connection.execute(text("INSERT INTO notes VALUES ('never committed')"))
    assert rollbacks == [1]
    async with engine.begin() as connection:  # the same pooled connection: nothing left open on it
        assert (await connection.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 0
        await connection.execute(text("INSERT INTO notes VALUES ('b')"))
    other = create_engine(database_url(None, tmp_path / "pool.sqlite3"))
    async with other.begin() as connection:  # and no write lock was left behind
        await connection.execute(text("INSERT INTO notes VALUES ('c')"))
        assert (await connection.execute(text("SELECT body FROM notes ORDER BY body"))).scalars().all() == ["b", "c"]
    await other.dispose()
    await engine.dispose()


async def test_a_transaction_the_pool_did_not_know_of_is_rolled_back_at_check_in(
    tmp_path: Path, rollbacks: list[int]
) -> None:
    """A statement run on the driver's cursor directly opens no SQLAlchemy transaction, so
    it is the pool's reset, not the connection's close, that must end it."""
    path = tmp_path / "pool.sqlite3"
    engine = create_engine(database_url(None, path), pool_size=1, max_overflow=0, pool_timeout_s=1.0)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE notes (body TEXT)"))
    async with engine.connect() as connection:
        await connection.run_sync(
            lambda sync: sync.connection.dbapi_connection.cursor().execute("INSERT INTO notes VALUES ('raw')"))
    assert rollbacks == [1]
    await _writable_and_empty(path)
    await engine.dispose()


async def test_a_connection_detached_from_the_pool_mid_transaction_is_rolled_back(
    tmp_path: Path, rollbacks: list[int]
) -> None:
    path = tmp_path / "pool.sqlite3"
    engine = create_engine(database_url(None, path))
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE notes (body TEXT)"))
    async with engine.connect() as connection:
        await connection.execute(text("INSERT INTO notes VALUES ('never committed')"))
        await connection.run_sync(lambda sync: sync.detach())
    assert rollbacks == [1]
    await _writable_and_empty(path)
    await engine.dispose()


async def _writable_and_empty(path: Path) -> None:
    """No row and no write lock left behind, seen from another engine."""
    other = create_engine(database_url(None, path))
    async with other.begin() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 0
        await connection.execute(text("INSERT INTO notes VALUES ('next')"))
    await other.dispose()
