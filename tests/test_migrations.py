"""Every schema change is a migration: new databases, and first-round ones, end up equal to the code's tables."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from app.store.database import MIGRATIONS, create_engine, database_url, metadata, migrate
from tests.support.servers import postgres_server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield database_url(None, tmp_path_factory.mktemp("migrations") / "db.sqlite3")
    else:
        with postgres_server() as server:
            yield database_url(server, Path("/unused"))


def differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


async def reset(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: metadata.drop_all(sync))
        await connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
        await connection.execute(text("DROP TABLE IF EXISTS conversation_messages"))
    await engine.dispose()


async def test_a_new_database_is_migrated_to_exactly_the_codes_tables(url: str) -> None:
    await reset(url)
    engine = create_engine(url)
    await migrate(engine)
    await migrate(engine)  # idempotent: a restart changes nothing
    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []
    await engine.dispose()


async def test_a_first_round_database_is_adopted_and_upgraded(url: str) -> None:
    """Round one made its tables with create_all and kept no version: such a database is
    stamped at revision 0001 and upgraded, its rows kept."""
    await reset(url)
    engine = create_engine(url)

    def first_round(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(text(
            "INSERT INTO ai_runs (run_id, tenant_id, user_id, chain, status, tokens_in, tokens_out, cost_usd,"
            " degraded, started_at) VALUES ('r1', 't', 'u', 'interactions', 'ok', 0, 0, 0, false, CURRENT_TIMESTAMP)"))

    async with engine.begin() as connection:
        await connection.run_sync(first_round)
    await migrate(engine)
    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []
        assert (await connection.execute(text("SELECT run_id FROM ai_runs"))).scalar_one() == "r1"
    await engine.dispose()


def _migrate_at(url: str, barrier: Any) -> None:
    """One process starting up: its own engine, the start-up's migration, once every
    process is ready to run it."""

    async def start() -> None:
        engine = create_engine(url)
        try:
            barrier.wait()
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(start())


def test_processes_starting_together_on_one_sqlite_file_all_start(tmp_path: Path) -> None:
    """`uvicorn --workers 3` on the embedded database: three processes migrate one new file
    at the same moment. Each must start, and the schema be the code's."""
    url = database_url(None, tmp_path / "db.sqlite3")
    context = multiprocessing.get_context("spawn")  # as uvicorn starts its workers
    barrier = context.Barrier(3)
    processes = [context.Process(target=_migrate_at, args=(url, barrier)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0, 0]

    async def schema_differences() -> list[object]:
        engine = create_engine(url)
        async with engine.connect() as connection:
            found = await connection.run_sync(differences)
        await engine.dispose()
        return found

    assert asyncio.run(schema_differences()) == []
