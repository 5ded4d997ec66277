"""Encryption at rest (#14): each tenant's wrapped data keys.

Existing rows stay as they were and are read as plaintext until rewritten: records
sealed from now on carry a header (app.crypto.envelope) that tells them apart.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.store.database import UTCDateTime

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    # A sealed title is longer than the 300 characters a title may have.
    with op.batch_alter_table("kb_documents") as batch:
        batch.alter_column("title", type_=sa.Text, existing_type=sa.String(300), existing_nullable=False)
    op.create_table(
        "tenant_data_keys",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("master_key_id", sa.String(32), nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tenant_data_keys")
    with op.batch_alter_table("kb_documents") as batch:
        batch.alter_column("title", type_=sa.String(300), existing_type=sa.Text, existing_nullable=False)
