"""auditor accounts and the audit timeline's index of log entries

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-21 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "auditor",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("session_salt", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "audit_log_index",
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("counter_party", sa.String(length=512), nullable=True),
        sa.Column("dataset", sa.String(length=512), nullable=True),
        sa.Column("agreement_id", sa.String(length=512), nullable=True),
        sa.Column("transfer_id", sa.String(length=512), nullable=True),
        sa.Column("personal", sa.Boolean(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("records", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("idx"),
    )
    with op.batch_alter_table("audit_log_index", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_index_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_index_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_index_counter_party"), ["counter_party"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_index_dataset"), ["dataset"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_index_agreement_id"), ["agreement_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_log_index", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_index_agreement_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_index_dataset"))
        batch_op.drop_index(batch_op.f("ix_audit_log_index_counter_party"))
        batch_op.drop_index(batch_op.f("ix_audit_log_index_created_at"))
        batch_op.drop_index(batch_op.f("ix_audit_log_index_kind"))
    op.drop_table("audit_log_index")
    op.drop_table("auditor")
