"""auditor accounts, the audit timeline's index of log entries and the filters' choices

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-21 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
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
        batch_op.create_index(batch_op.f("ix_audit_log_index_created_at"), ["created_at"], unique=False)
        batch_op.create_index("ix_audit_log_index_counter_party_idx", ["counter_party", "idx"], unique=False)
        batch_op.create_index("ix_audit_log_index_dataset_idx", ["dataset", "idx"], unique=False)
        batch_op.create_index("ix_audit_log_index_kind_created_at", ["kind", "created_at"], unique=False)
    op.create_table(
        "audit_log_facet",
        sa.Column("field", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("field", "value"),
    )


def downgrade() -> None:
    op.drop_table("audit_log_facet")
    with op.batch_alter_table("audit_log_index", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_index_kind_created_at")
        batch_op.drop_index("ix_audit_log_index_dataset_idx")
        batch_op.drop_index("ix_audit_log_index_counter_party_idx")
        batch_op.drop_index(batch_op.f("ix_audit_log_index_created_at"))
    op.drop_table("audit_log_index")
    op.drop_table("auditor")
