"""Transfer evidence: what the provider served (payload hash, records, consent), the policy decision,
and the signed statements still to be countersigned by the counter-party.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-21 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("transfer_process", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payload_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("records", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("consent_summary", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("policy_decision", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("statements_outbox", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("transfer_process", schema=None) as batch_op:
        batch_op.drop_column("statements_outbox")
        batch_op.drop_column("policy_decision")
        batch_op.drop_column("consent_summary")
        batch_op.drop_column("records")
        batch_op.drop_column("payload_sha256")
