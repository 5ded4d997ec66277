"""Customer history under a burst of streams: concurrent reads share one statement, and
each caller still gets its own customer's newest interactions, within its own tenant.
On SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from app.crypto.envelope import TEXT_PREFIX, DecryptionFailed
from app.store.database import create_engine, customer_interactions, migrate
from app.store.database import database_url as sql_url
from app.store.interactions import MAX_READS_PER_BATCH, InteractionLog
from tests.conftest import EngineEvents
from tests.support.stores import keyring_for

LIMIT = 3


@pytest.fixture
async def log(database_url: str | None, tmp_path: Path) -> AsyncIterator[InteractionLog]:
    engine = create_engine(sql_url(database_url, tmp_path / "history.sqlite3"))
    await migrate(engine)
    found = InteractionLog(engine, keyring_for(engine))
    try:
        yield found
    finally:
        await found.close()
        await engine.dispose()


def history_statements(log: InteractionLog, engine_events: EngineEvents) -> list[str]:
    """Every statement that reads the history table, as the driver receives it."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "customer_interactions" in statement:
            seen.append(statement)

    engine_events(log.engine, "before_cursor_execute", record)
    return seen


async def record_history(log: InteractionLog, tenant: str, customer: str, count: int) -> list[str]:
    """`count` interactions a day apart; their summaries, newest first."""
    now = datetime.now(UTC)
    summaries = [f"{tenant}/{customer} #{n}" for n in range(count)]
    await asyncio.gather(*(
        log.record(tenant, customer, "email", {"sentiment": {"label": "neutral", "score": 0.0}, "summary": summary},
                   at=now - timedelta(days=count - n))
        for n, summary in enumerate(summaries)))
    return summaries[::-1]


async def test_a_burst_of_reads_is_a_few_statements_and_each_gets_its_own_customers_newest(
        log: InteractionLog, engine_events: EngineEvents) -> None:
    tenants = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    # The same customer id in both tenants, and customers with fewer rows than the limit.
    customers = [f"c{i}" for i in range(20)]
    expected = {
        (tenant, customer): await record_history(log, tenant, customer, count=i % 5 + (1 if tenant == tenants[0] else 2))
        for tenant in tenants for i, customer in enumerate(customers)
    }
    # Two interactions at the same instant: the later one (higher id) is the newer.
    same_time = datetime.now(UTC)
    for summary in ("tie, first", "tie, second"):
        await log.record(tenants[0], "c0", "chat", {"summary": summary}, at=same_time)
    expected[tenants[0], "c0"] = ["tie, second", "tie, first", *expected[tenants[0], "c0"]]
    reads = [key for key in expected for _ in range(6)]  # every customer asked for 6 times
    assert len(reads) > MAX_READS_PER_BATCH
    statements = history_statements(log, engine_events)

    results = await asyncio.gather(*(log.recent(tenant, customer, limit=LIMIT) for tenant, customer in reads))

    for (tenant, customer), history in zip(reads, results, strict=True):
        assert [past.summary for past in history] == expected[tenant, customer][:LIMIT], (tenant, customer)
    assert results[0] is not results[1], "each caller gets a list of its own"
    # One statement per batch of at most MAX_READS_PER_BATCH reads; the first read may
    # go out alone, the others wait for it.
    assert 2 <= len(statements) <= 3, len(statements)

    statements.clear()  # a read on its own afterwards is answered the same way
    alone = await log.recent(tenants[1], "c7", limit=LIMIT)
    assert [past.summary for past in alone] == expected[tenants[1], "c7"][:LIMIT]
    assert len(statements) == 1


async def test_reads_of_one_batch_keep_their_own_limits_and_a_shape_serves_again(
        log: InteractionLog, engine_events: EngineEvents) -> None:
    """Customers and limits are the statement's parameters: the same shape, with other
    customers and limits, answers each read with its own."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    newest = {customer: await record_history(log, tenant, customer, count=6) for customer in ("a", "b", "c")}
    statements = history_statements(log, engine_events)
    for customers in (("a", "b", "c"), ("c", "a", "b")):
        reads = [(customer, limit) for customer in customers for limit in (1, 2, 5)]
        results = await asyncio.gather(*(log.recent(tenant, customer, limit=limit) for customer, limit in reads))
        for (customer, limit), history in zip(reads, results, strict=True):
            assert [past.summary for past in history] == newest[customer][:limit], (customer, limit)
    assert 2 <= len(statements) <= 4, "nine reads at once are one statement (the first may go alone)"


async def test_a_caller_that_leaves_mid_read_does_not_take_the_others_reads_with_it(
        log: InteractionLog, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    newest = await record_history(log, tenant, "c", count=4)
    cipher, reading, release = log.keys.cipher, asyncio.Event(), asyncio.Event()

    async def held(tenant_id: str) -> Any:  # the statement has run; the batch is under way
        reading.set()
        await release.wait()
        return await cipher(tenant_id)

    monkeypatch.setattr(log.keys, "cipher", held)
    readers = [asyncio.create_task(log.recent(tenant, "c", limit=LIMIT)) for _ in range(5)]
    await reading.wait()
    readers[0].cancel()
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*readers[1:])
    assert all([past.summary for past in history] == newest[:LIMIT] for history in results)
    assert readers[0].cancelled()
    assert [past.summary for past in await log.recent(tenant, "c", limit=LIMIT)] == newest[:LIMIT]


async def test_a_tenant_whose_key_fails_or_a_row_that_does_not_open_fails_only_its_own_read(
        log: InteractionLog, monkeypatch: pytest.MonkeyPatch, engine_events: EngineEvents) -> None:
    healthy, broken, tampered = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(3))
    newest = await record_history(log, healthy, "c", count=2)
    await record_history(log, broken, "c", count=2)
    await record_history(log, tampered, "c", count=2)
    async with log.engine.begin() as connection:  # another tenant's sealed text, moved in
        foreign = (await connection.execute(select(customer_interactions.c.summary).where(
            customer_interactions.c.tenant_id == healthy).limit(1))).scalar_one()
        assert foreign.startswith(TEXT_PREFIX)
        await connection.execute(update(customer_interactions).where(customer_interactions.c.tenant_id == tampered)
                                 .values(summary=foreign))
    cipher = log.keys.cipher

    async def failing(tenant_id: str) -> Any:
        if tenant_id == broken:
            raise RuntimeError("key store unavailable")
        return await cipher(tenant_id)

    monkeypatch.setattr(log.keys, "cipher", failing)
    statements = history_statements(log, engine_events)
    results = await asyncio.gather(log.recent(broken, "c"), log.recent(tampered, "c"), log.recent(healthy, "c"),
                                   return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert isinstance(results[1], DecryptionFailed)
    assert not isinstance(results[2], BaseException)
    assert [past.summary for past in results[2]] == newest
    assert len(statements) == 1, "the three reads were one batch"


async def test_a_failed_statement_reaches_every_caller_and_the_next_reads_are_served(log: InteractionLog) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    newest = await record_history(log, tenant, "c", count=2)

    async def rename(table: str, to: str) -> None:
        async with log.engine.begin() as connection:
            await connection.execute(text(f"ALTER TABLE {table} RENAME TO {to}"))

    await rename("customer_interactions", "customer_interactions_away")  # every read of it fails
    try:
        failed = await asyncio.gather(*(log.recent(tenant, "c") for _ in range(3)), return_exceptions=True)
    finally:
        await rename("customer_interactions_away", "customer_interactions")
    assert all(isinstance(error, DBAPIError) for error in failed), failed
    assert [past.summary for past in await log.recent(tenant, "c")] == newest


async def test_closing_serves_the_reads_already_queued(log: InteractionLog) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    newest = await record_history(log, tenant, "c", count=2)
    readers = [asyncio.create_task(log.recent(tenant, "c")) for _ in range(4)]
    await asyncio.sleep(0)  # queued
    await log.close()
    assert all([past.summary for past in reader.result()] == newest for reader in readers)
