"""The tamper-evident part of the audit trail: a hash chain per tenant.

Each final audit record (a finished run, a security event) gets one link in the
append-only `audit_chain` table: the tenant's next sequence number, which record it
is, a digest of the record's stored column values, the previous link's hash and its
own hash. Editing a record breaks its digest, deleting one leaves a link to nothing,
deleting a link breaks the sequence and the next `prev_hash`, and `audit_chain_heads`
(one row per tenant: last sequence and hash) shows a chopped-off tail.

Why digest the values *as the database stores them* (cast to text in SQL, not the
Python objects the column types return): a column that is later encrypted before it is
stored is then covered as ciphertext, and the chain still verifies without the key.
PostgreSQL renders timestamps by the session's time zone, so every transaction that
digests pins the text forms (`pin_text_forms`) first.

Why a head row locked `FOR UPDATE`: replicas append concurrently to one PostgreSQL; the
lock serializes appends per tenant (gap-free, never forked) while other tenants'
appends go ahead. The primary key (tenant, seq) would refuse a fork anyway. SQLite
serializes writers by itself: the transaction's earlier writes (the records being made
final) already hold its write lock when a head is read.
All functions take a synchronous `Connection`: the async writer calls them through
`run_sync`, and migration 0006 uses the same code to chain records written before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    cast,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from app.store.database import UTCDateTime, metadata

GENESIS = "0" * 64
TENANTLESS = "-"  # events with no verified tenant (bad tokens); no tenant id can be "-"

audit_chain = Table(
    "audit_chain",
    metadata,
    Column("tenant_id", String(128), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("record_kind", String(32), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("chained_at", UTCDateTime(), nullable=False),
    # Not unique: a record that changes after it was chained (a run the liveness sweep
    # marked interrupted that finishes after all) is chained again; its newest link
    # must match what is stored, the older ones stay in the sequence.
    Index("ix_audit_chain_record", "record_kind", "record_id"),
)

audit_chain_heads = Table(
    "audit_chain_heads",
    metadata,
    Column("tenant_id", String(128), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)


@dataclass(frozen=True, slots=True)
class ChainedTable:
    """A table whose rows are chained: `kind` names it in links, `key` identifies a row."""

    kind: str
    table: Table
    key: str
    final: Any = None  # which rows must be on the chain (None: every row)

    def typed_ids(self, ids: Iterable[str]) -> list[Any]:
        integer = isinstance(self.table.c[self.key].type, Integer)
        return [int(i) for i in ids] if integer else list(ids)


@dataclass(frozen=True, slots=True)
class Link:
    tenant_id: str
    seq: int
    record_kind: str
    record_id: str
    digest: str
    prev_hash: str
    hash: str


def pin_text_forms(connection: Connection) -> None:
    """Makes PostgreSQL render values the same way in every session (this transaction only)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SET LOCAL TimeZone = 'UTC'"))
        connection.execute(text("SET LOCAL DateStyle = 'ISO, YMD'"))
        connection.execute(text("SET LOCAL extra_float_digits = 1"))


def stored_values(connection: Connection, chained: ChainedTable, ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each row's non-null columns as the database renders their stored values in text.

    Null columns are left out, so a column a later migration adds (null in old rows)
    does not change old digests, while setting or clearing a value does."""
    table = chained.table
    found: dict[str, dict[str, str]] = {}
    typed = chained.typed_ids(ids)
    for start in range(0, len(typed), 500):
        statement = select(*[cast(column, Text).label(column.name) for column in table.c]).where(
            table.c[chained.key].in_(typed[start:start + 500])
        )
        for row in connection.execute(statement).mappings():
            found[str(row[chained.key])] = {name: value for name, value in row.items() if value is not None}
    return found


def digest(kind: str, values: dict[str, str]) -> str:
    payload = json.dumps([kind, values], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def link_hash(tenant_id: str, seq: int, record_kind: str, record_id: str, record_digest: str, prev_hash: str) -> str:
    payload = json.dumps([tenant_id, seq, record_kind, record_id, record_digest, prev_hash], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _insert_ignoring_existing(connection: Connection, table: Table, values: dict[str, Any]) -> None:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(postgresql.insert(table).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        connection.execute(sqlite.insert(table).values(values).on_conflict_do_nothing())
    else:  # pragma: no cover - the service runs on SQLite or PostgreSQL
        raise RuntimeError(f"audit chain does not support {dialect}")


def _locked_head(connection: Connection, tenant_id: str) -> tuple[int, str]:
    """A head, once made, is never deleted: after a tenant's first link it is read and
    locked in one statement. Every batch of finished runs waits for this (and every new
    run's first event waits for that batch), and each statement is a round trip to
    PostgreSQL, or three trips to aiosqlite's thread when SQLite's work could not be done
    on the loop (`app.store.database_work`). A missing head is made first, by whichever
    writer gets there."""
    statement = (
        select(audit_chain_heads.c.seq, audit_chain_heads.c.hash)
        .where(audit_chain_heads.c.tenant_id == tenant_id)
        .with_for_update()
    )
    row = connection.execute(statement).one_or_none()
    if row is None:
        _insert_ignoring_existing(connection, audit_chain_heads, {"tenant_id": tenant_id, "seq": 0, "hash": GENESIS})
        row = connection.execute(statement).one()
    return int(row.seq), str(row.hash)


def chain_records(connection: Connection, chained: ChainedTable, ids: Sequence[str], now: Any) -> int:
    """Appends a link for each record in `ids` (in that order); see `chain_groups`."""
    return chain_groups(connection, [(chained, ids)], now)


def chain_groups(connection: Connection, groups: Sequence[tuple[ChainedTable, Sequence[str]]], now: Any) -> int:
    """Appends a link for each record of each group (in that order), digesting what is
    stored now; call it in the transaction that made the records final, after its other
    writes. Every head of the batch is locked here, at once and in tenant order, so two
    writers never wait on each other's heads in a cycle. Returns links added."""
    if not any(ids for _, ids in groups):
        return 0
    pin_text_forms(connection)
    by_tenant: dict[str, list[tuple[str, str, str]]] = {}
    for chained, ids in groups:
        values = stored_values(connection, chained, ids) if ids else {}
        for record_id in ids:
            row = values.get(str(record_id))
            if row is None:
                continue  # nothing stored (a finish for a run whose start was never written)
            tenant = row.get("tenant_id") or TENANTLESS
            by_tenant.setdefault(tenant, []).append((chained.kind, str(record_id), digest(chained.kind, row)))
    if not by_tenant:
        return 0
    links: list[dict[str, Any]] = []
    heads: list[dict[str, Any]] = []
    for tenant in sorted(by_tenant):  # one lock order for every writer: no deadlocks
        seq, previous = _locked_head(connection, tenant)
        for kind, record_id, record_digest in by_tenant[tenant]:
            seq += 1
            current = link_hash(tenant, seq, kind, record_id, record_digest, previous)
            links.append({"tenant_id": tenant, "seq": seq, "record_kind": kind, "record_id": record_id,
                          "digest": record_digest, "prev_hash": previous, "hash": current, "chained_at": now})
            previous = current
        heads.append({"b_tenant": tenant, "b_seq": seq, "b_hash": previous})
    connection.execute(insert(audit_chain), links)
    connection.execute(
        update(audit_chain_heads).where(audit_chain_heads.c.tenant_id == bindparam("b_tenant"))
        .values(seq=bindparam("b_seq"), hash=bindparam("b_hash")),
        heads,
    )
    return len(links)
