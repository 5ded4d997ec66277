"""Tamper-evident audit (#14 item 4) and security events with route and client (#14 item 3).

Adds the per-tenant hash chain (`audit_chain`, `audit_chain_heads`), the `route` and
`client_address` of security events, and the indexes the cross-tenant checks look
up by (a document, lead or chat session id, whatever the tenant). Records written before
this revision are chained here, in their order, so `python -m app audit verify` covers
them too; their digests are computed from the tables as they stand at this revision
(reflected, not the code's current tables).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from app.store.audit_chain import ChainedTable, chain_records
from app.store.database import UTCDateTime

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "audit_chain",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("record_kind", sa.String(32), nullable=False),
        sa.Column("record_id", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("chained_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_audit_chain_record", "audit_chain", ["record_kind", "record_id"])
    op.create_table(
        "audit_chain_heads",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    with op.batch_alter_table("security_events") as batch:
        batch.add_column(sa.Column("route", sa.String(256), nullable=True))
        batch.add_column(sa.Column("client_address", sa.String(64), nullable=True))
    op.create_index("ix_kb_documents_document_id", "kb_documents", ["document_id"])
    op.create_index("ix_conversation_turns_session_id", "conversation_turns", ["session_id"])
    op.create_index("ix_lead_scores_lead_id", "lead_scores", ["lead_id"])
    _chain_existing_records(op.get_bind())


def _chain_existing_records(connection: sa.Connection) -> None:
    reflected = sa.MetaData()
    runs = sa.Table("ai_runs", reflected, autoload_with=connection)
    events = sa.Table("security_events", reflected, autoload_with=connection)
    now = datetime.now(UTC)
    run_ids = connection.execute(
        sa.select(runs.c.run_id).where(runs.c.status != "running").order_by(runs.c.started_at, runs.c.run_id)
    ).scalars().all()
    chain_records(connection, ChainedTable("run", runs, "run_id"), [str(i) for i in run_ids], now)
    event_ids = connection.execute(sa.select(events.c.id).order_by(events.c.id)).scalars().all()
    chain_records(connection, ChainedTable("security_event", events, "id"), [str(i) for i in event_ids], now)


def downgrade() -> None:
    op.drop_index("ix_lead_scores_lead_id", "lead_scores")
    op.drop_index("ix_conversation_turns_session_id", "conversation_turns")
    op.drop_index("ix_kb_documents_document_id", "kb_documents")
    with op.batch_alter_table("security_events") as batch:
        batch.drop_column("client_address")
        batch.drop_column("route")
    op.drop_table("audit_chain_heads")
    op.drop_index("ix_audit_chain_record", "audit_chain")
    op.drop_table("audit_chain")
