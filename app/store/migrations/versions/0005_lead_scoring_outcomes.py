"""Lead scoring that learns from outcomes (#13): stored scores, outcomes, tenant models.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.store.database import UTCDateTime

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "lead_scores",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("score", sa.Integer, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("features", sa.JSON, nullable=False),
        sa.Column("explanation", sa.JSON, nullable=False),
        sa.Column("scored_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_lead_scores_lead", "lead_scores", ["tenant_id", "lead_id", "id"])
    op.create_table(
        "lead_outcomes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("lead_id", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("features", sa.JSON, nullable=False),
        sa.Column("features_from", sa.String(16), nullable=False),
        sa.Column("recorded_by", sa.String(256), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_lead_outcomes_lead", "lead_outcomes", ["tenant_id", "lead_id", "id"])
    op.create_table(
        "scoring_models",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("prior", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("out_of_fold", sa.JSON, nullable=False),
        sa.Column("training_size", sa.Integer, nullable=False),
        sa.Column("outcomes_total", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scoring_models")
    op.drop_index("ix_lead_outcomes_lead", "lead_outcomes")
    op.drop_table("lead_outcomes")
    op.drop_index("ix_lead_scores_lead", "lead_scores")
    op.drop_table("lead_scores")
