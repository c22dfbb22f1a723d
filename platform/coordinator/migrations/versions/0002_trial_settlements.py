"""Per-trial Ethereum settlement switch and halt record.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trial_settlements",
        sa.Column("trial_id", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.Float(), nullable=False),
        sa.Column("changed_by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("halted_code", sa.String(64), nullable=True),
        sa.Column("halted_message", sa.Text(), nullable=True),
        sa.Column("halted_at", sa.Float(), nullable=True),
        sa.Column("halted_round", sa.Integer(), nullable=True),
        sa.Column("halted_attempt", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("trial_id", name="pk_trial_settlements"),
    )


def downgrade() -> None:
    op.drop_table("trial_settlements")
