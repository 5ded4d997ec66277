"""A revision counter per tenant's knowledge base, for the in-memory retrieval index (#13).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "kb_revisions",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("revision", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kb_revisions")
