"""Checks the audit hash chain against the records (`python -m app audit verify`).

For every tenant it walks the links in sequence order and reports the first link of
each kind of damage: a gap in the sequence (a deleted link), a `prev_hash` or `hash`
that does not follow (an edited link), a record that no longer exists (a deleted
record), a record whose stored values no longer match its newest link's digest (an
edited record; a record chained twice, a run interrupted then finished, is compared
with its newest link),
a head row that disagrees with the last link (a chopped-off tail), and final records
that have no link at all (inserted behind the service's back, or their link deleted).

What it cannot see: someone with write access who rewrites a tenant's whole tail
consistently (records, links and head). Only the heads it prints, kept elsewhere
(an operator's log, a ticket, another system), anchor against that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Connection, String, and_, cast, select

from app.store.audit_chain import (
    GENESIS,
    ChainedTable,
    audit_chain,
    audit_chain_heads,
    digest,
    link_hash,
    pin_text_forms,
    stored_values,
)


@dataclass(frozen=True, slots=True)
class Problem:
    tenant_id: str
    seq: int | None
    record: str  # "kind id"
    what: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "no link"
        return f"tenant {self.tenant_id}: {where} ({self.record}): {self.what}"


@dataclass(slots=True)
class TenantChain:
    tenant_id: str
    links: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problems: list[Problem] = field(default_factory=list)


def _tenants(connection: Connection) -> list[str]:
    with_links = set(connection.execute(select(audit_chain.c.tenant_id).distinct()).scalars())
    with_heads = set(connection.execute(select(audit_chain_heads.c.tenant_id)).scalars())
    return sorted(with_links | with_heads)


def _verify_tenant(connection: Connection, tenant_id: str, tables: dict[str, ChainedTable]) -> TenantChain:
    report = TenantChain(tenant_id)
    links = connection.execute(
        select(audit_chain).where(audit_chain.c.tenant_id == tenant_id).order_by(audit_chain.c.seq)
    ).mappings().all()
    wanted: dict[str, list[str]] = {}
    for link in links:
        wanted.setdefault(link["record_kind"], []).append(link["record_id"])
    stored = {kind: stored_values(connection, tables[kind], ids) for kind, ids in wanted.items() if kind in tables}
    newest = {(link["record_kind"], link["record_id"]): link["seq"] for link in links}  # re-chained records
    expected_seq, previous = 1, GENESIS
    for link in links:
        record = f"{link['record_kind']} {link['record_id']}"

        def problem(what: str, seq: int | None = link["seq"], record: str = record) -> None:
            report.problems.append(Problem(tenant_id, seq, record, what))

        if link["seq"] != expected_seq:
            problem(f"sequence jumps from {expected_seq - 1} to {link['seq']}: links were deleted")
        if link["prev_hash"] != previous:
            problem("prev_hash does not match the previous link: a link was deleted or edited")
        recomputed = link_hash(tenant_id, link["seq"], link["record_kind"], link["record_id"],
                               link["digest"], link["prev_hash"])
        if recomputed != link["hash"]:
            problem("the link's hash does not match its contents: the link was edited")
        values = stored.get(link["record_kind"], {}).get(link["record_id"])
        if link["record_kind"] not in tables:
            problem("unknown record kind")
        elif values is None:
            problem("the record was deleted")
        elif (newest[(link["record_kind"], link["record_id"])] == link["seq"]
              and digest(link["record_kind"], values) != link["digest"]):
            problem("the record's stored values changed since it was chained: the record was edited")
        expected_seq, previous = link["seq"] + 1, link["hash"]
    report.links = len(links)
    head = connection.execute(
        select(audit_chain_heads.c.seq, audit_chain_heads.c.hash).where(audit_chain_heads.c.tenant_id == tenant_id)
    ).one_or_none()
    last_seq = links[-1]["seq"] if links else 0
    if head is None:
        report.problems.append(Problem(tenant_id, None, "head", "the tenant's head row is missing"))
        report.head_seq, report.head_hash = last_seq, previous
    else:
        report.head_seq, report.head_hash = int(head.seq), str(head.hash)
        if (head.seq, head.hash) != (last_seq, previous):
            report.problems.append(Problem(
                tenant_id, int(head.seq), "head",
                f"the head says seq {head.seq} but the chain ends at seq {last_seq}: the tail was deleted or rewritten"))
    return report


def _unchained(connection: Connection, chained: ChainedTable) -> list[Problem]:
    """Final records with no link: inserted outside the service, or their link deleted."""
    table = chained.table
    key = table.c[chained.key]
    joined = table.outerjoin(
        audit_chain, and_(audit_chain.c.record_kind == chained.kind, audit_chain.c.record_id == cast(key, String))
    )
    condition: ColumnElement[bool] = audit_chain.c.seq.is_(None)
    if chained.final is not None:
        condition = and_(condition, chained.final)
    rows = connection.execute(select(key, table.c.tenant_id).select_from(joined).where(condition).limit(1000))
    return [Problem(row.tenant_id, None, f"{chained.kind} {row[0]}", "the record is not on the chain")
            for row in rows]


def verify_chain(connection: Connection, chained: Sequence[ChainedTable]) -> tuple[list[TenantChain], list[Problem]]:
    """Every tenant's chain, then the final records missing from every chain."""
    pin_text_forms(connection)
    tables = {c.kind: c for c in chained}
    reports = [_verify_tenant(connection, tenant, tables) for tenant in _tenants(connection)]
    return reports, [problem for c in chained for problem in _unchained(connection, c)]
