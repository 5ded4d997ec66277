"""Every analysed interaction of a customer, per tenant: the history the next analysis
reads (issues this week, sentiment trend, recent summaries). Summaries quote the
customer, so they are sealed with the tenant's data key; labels and scores are not.

Writes are group-committed (`app.store.group_commit`): a hundred streams finishing at
once are a few transactions, not a hundred competing for SQLite's one write lock (which
lost some of them under load: `bench/stream_bench.py`), and a failed write is retried.
Reads are batched the same way: 1,000 streams opened at once each read their customer's
history, and one connection each ran the pool dry."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import CompoundSelect, Connection, Integer, bindparam, insert, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from app.crypto.keyring import Keyring
from app.store.audit import utcnow
from app.store.batch_queue import BatchQueue
from app.store.database import customer_interactions as interactions
from app.store.database_work import database_work
from app.store.group_commit import GroupCommitWriter
from chains.customer_context import PastInteraction

PURPOSE = "customer_interactions.summary"
# Customers per history statement: five bound parameters each on SQLite (four on
# PostgreSQL), and as many UNION ALL terms: within SQLite's limits (500 terms).
MAX_READS_PER_BATCH = 128


@dataclass(frozen=True)
class _HistoryRead:
    tenant_id: str
    customer_id: str
    limit: int


_NOTHING = _HistoryRead("", "", 0)  # pads a statement to its shape; matches no row


@functools.cache  # one per shape: powers of two up to MAX_READS_PER_BATCH
def _history_statement(shape: int) -> CompoundSelect:
    """`shape` customers' newest rows, each customer bound as parameters, so the statement
    is built once per shape: building 128 subqueries and their cache key took ~27 ms of
    the event loop for every batch (0.3 ms for the cache key of one built before), and
    left their constructs to the garbage collector."""
    parts = [
        select(interactions)
        .where((interactions.c.tenant_id == bindparam(f"tenant_{index}"))
               & (interactions.c.customer_id == bindparam(f"customer_{index}")))
        .order_by(interactions.c.created_at.desc(), interactions.c.id.desc())
        .limit(bindparam(f"limit_{index}", type_=Integer))
        .subquery()
        for index in range(shape)
    ]
    return union_all(*(select(part, literal(index).label("read")) for index, part in enumerate(parts)))


def _insert(connection: Connection, rows: list[dict[str, Any]]) -> None:
    connection.execute(insert(interactions), rows)


class InteractionLog:
    def __init__(self, engine: AsyncEngine, keys: Keyring) -> None:
        self.engine = engine
        self.keys = keys
        self._work = database_work(engine)
        self._writer: GroupCommitWriter[dict[str, Any]] = GroupCommitWriter(engine, _insert, name="interaction-writer")
        self._reader: BatchQueue[_HistoryRead, list[PastInteraction]] = BatchQueue(
            self._read_batch, name="interaction-reader", max_batch=MAX_READS_PER_BATCH)

    async def record(self, tenant_id: str, customer_id: str, channel: str, analysis: dict[str, Any],
                     at: datetime | None = None) -> None:
        """Returns once the row is committed; a caller cancelled meanwhile does not cancel it."""
        sentiment = analysis.get("sentiment") or {}
        summary = (await self.keys.cipher(tenant_id)).seal_text(PURPOSE, str(analysis.get("summary", ""))[:500])
        await self._writer.submit({
            "tenant_id": tenant_id, "customer_id": customer_id, "created_at": at or utcnow(), "channel": channel,
            "sentiment_label": str(sentiment.get("label", "neutral")),
            "sentiment_score": float(sentiment.get("score", 0.0)),
            "intent": str(analysis.get("intent", "general_inquiry")), "urgency": str(analysis.get("urgency", "low")),
            "automated": bool(analysis.get("automated", False)), "summary": summary,
        })

    async def close(self) -> None:
        await self._writer.close()
        await self._reader.close()

    async def recent(self, tenant_id: str, customer_id: str, *, limit: int = 10) -> list[PastInteraction]:
        """The customer's last `limit` interactions, newest first. Concurrent reads share a
        round trip (`app.store.batch_queue`)."""
        return await self._reader.submit(_HistoryRead(tenant_id, customer_id, limit))

    async def _read_batch(self, reads: list[_HistoryRead]) -> list[list[PastInteraction] | Exception]:
        """One statement for the batch: each distinct customer's own newest rows (a
        subquery each, so each stops at its limit on the index), joined with UNION ALL.
        The number of subqueries is rounded up to a power of two with reads that match
        nothing, so the statement has a few shapes, not one per batch size (each shape is
        built, compiled, cached and prepared once)."""
        wanted = list(dict.fromkeys(reads))
        shape = 1 << (len(wanted) - 1).bit_length()
        parameters: dict[str, Any] = {}
        for index, read in enumerate(wanted + [_NOTHING] * (shape - len(wanted))):
            parameters |= {f"tenant_{index}": read.tenant_id, f"customer_{index}": read.customer_id,
                           f"limit_{index}": read.limit}
        statement = _history_statement(shape)
        rows = await self._work.read(lambda connection: connection.execute(statement, parameters).mappings().all(),
                                     rows=sum(read.limit for read in wanted))
        by_read: dict[_HistoryRead, list[Any]] = {read: [] for read in wanted}
        for row in rows:
            by_read[wanted[row["read"]]].append(row)
        tenants = sorted({read.tenant_id for read in wanted})
        ciphers = dict(zip(tenants, await asyncio.gather(*(self.keys.cipher(t) for t in tenants),
                                                         return_exceptions=True), strict=True))
        history: dict[_HistoryRead, list[PastInteraction] | Exception] = {}
        for read, found in by_read.items():
            # A tenant's key that cannot be loaded, or a row that does not open, fails
            # that read alone, never its neighbours in the batch.
            try:
                cipher = ciphers[read.tenant_id]
                if isinstance(cipher, BaseException):
                    raise cipher
                history[read] = [
                    PastInteraction(row["created_at"], row["channel"], row["sentiment_label"], row["sentiment_score"],
                                    row["intent"], row["urgency"], row["automated"],
                                    cipher.open_text(PURPOSE, row["summary"]))
                    for row in sorted(found, key=lambda row: (row["created_at"], row["id"]), reverse=True)
                ]
            except Exception as error:  # noqa: BLE001 - raised to that read's callers
                history[read] = error
        # Each caller gets a list of its own (the items are frozen).
        return [found if isinstance(found := history[read], Exception) else list(found) for read in reads]
