"""Background runs (#16): `workflow_runs`.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.store.database import UTCDateTime

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "workflow_runs",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("chain", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("retry", sa.Boolean, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("process_id", sa.String(64), nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("end_event_id", sa.String(48), nullable=True),
    )
    op.create_index("ix_workflow_runs_tenant_created", "workflow_runs", ["tenant_id", "created_at", "run_id"])
    op.create_index("ix_workflow_runs_tenant_status", "workflow_runs", ["tenant_id", "status"])
    op.create_index("ix_workflow_runs_idempotency", "workflow_runs", ["tenant_id", "user_id", "idempotency_key"], unique=True)
    op.create_index("ix_workflow_runs_status_process", "workflow_runs", ["status", "process_id"])


def downgrade() -> None:
    op.drop_table("workflow_runs")
