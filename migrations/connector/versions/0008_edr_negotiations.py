"""EDR negotiations (negotiations that start a pull transfer on FINALIZED)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21 15:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "edr_negotiation",
        sa.Column("negotiation_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=512), nullable=True),
        sa.Column("callback_addresses", sa.Text(), nullable=True),
        sa.Column("transfer_id", sa.String(length=64), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("negotiation_id"),
    )
    with op.batch_alter_table("edr_negotiation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_edr_negotiation_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("edr_negotiation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_edr_negotiation_state"))
    op.drop_table("edr_negotiation")
