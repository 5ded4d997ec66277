"""Memory keyed by customer (#17); runs know their process, processes beat (#11).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.store.database import UTCDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "conversation_turns",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_conversation_turns_session", "conversation_turns",
                    ["tenant_id", "user_id", "customer_id", "session_id", "id"])
    # The first memory table keyed turns by session only, so a session mixed customers:
    # its turns cannot be attributed to a customer (nor erased per customer), and chat
    # memory is working context, not a record. It goes.
    op.drop_index("ix_conversation_session", table_name="conversation_messages")
    op.drop_table("conversation_messages")
    op.create_table(
        "service_processes",
        sa.Column("process_id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("ai_runs") as batch:
        batch.add_column(sa.Column("process_id", sa.String(64), nullable=True))
    op.create_index("ix_ai_runs_process_status", "ai_runs", ["process_id", "status"])
