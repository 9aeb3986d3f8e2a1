"""sign-in attempts: the sliding-window limits every replica shares (runtime.ratelimit)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 02:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "sign_in_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sign_in_attempt", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sign_in_attempt_key_hash"), ["key_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_sign_in_attempt_at_ms"), ["at_ms"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sign_in_attempt", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sign_in_attempt_at_ms"))
        batch_op.drop_index(batch_op.f("ix_sign_in_attempt_key_hash"))
    op.drop_table("sign_in_attempt")
