"""Initial schema: request nonces, enrolment requests, scheduler bookkeeping, API audit log.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_nonces",
        sa.Column("msp_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("msp_id", "nonce", name="pk_request_nonces"),
    )
    op.create_index("ix_request_nonces_timestamp", "request_nonces", ["timestamp"])
    op.create_table(
        "enrolment_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trial_id", sa.String(64), nullable=False),
        sa.Column("msp_id", sa.String(64), nullable=False),
        sa.Column("encryption_public_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_at", sa.BigInteger(), nullable=False),
        sa.Column("requested_by", sa.String(256), nullable=False),
        sa.Column("decided_at", sa.BigInteger(), nullable=True),
        sa.Column("decided_by", sa.String(256), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("tx_id", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_enrolment_requests"),
        sa.UniqueConstraint("trial_id", "msp_id", name="uq_enrolment_requests_trial_msp"),
    )
    op.create_index("ix_enrolment_requests_trial_id", "enrolment_requests", ["trial_id"])
    op.create_table(
        "scheduler_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trial_id", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tx_id", sa.String(128), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_scheduler_steps"),
    )
    op.create_index("ix_scheduler_steps_trial_id", "scheduler_steps", ["trial_id"])
    op.create_table(
        "scheduler_state",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_scheduler_state"),
    )
    op.create_table(
        "api_audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("msp_id", sa.String(64), nullable=True),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("role", sa.String(32), nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_audit_log"),
    )
    op.create_index("ix_api_audit_log_at", "api_audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_api_audit_log_at", table_name="api_audit_log")
    op.drop_table("api_audit_log")
    op.drop_table("scheduler_state")
    op.drop_index("ix_scheduler_steps_trial_id", table_name="scheduler_steps")
    op.drop_table("scheduler_steps")
    op.drop_index("ix_enrolment_requests_trial_id", table_name="enrolment_requests")
    op.drop_table("enrolment_requests")
    op.drop_index("ix_request_nonces_timestamp", table_name="request_nonces")
    op.drop_table("request_nonces")
