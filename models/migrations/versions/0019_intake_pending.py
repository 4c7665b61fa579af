"""lines naming a booking or order not known yet are kept until it arrives

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 09:40:00

``intake_pending``: a reschedule or cancellation from an earlier file or request than its
booking or order, kept (by its dedupe key) and applied when the record arrives, instead of
being rejected and lost.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import models.types

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "intake_pending",
        sa.Column("dedupe_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("ref", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
        sa.Column("at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("line", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("received_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dedupe_key"),
    )
    with op.batch_alter_table("intake_pending", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_intake_pending_ref"), ["ref"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("intake_pending", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_intake_pending_ref"))
    op.drop_table("intake_pending")
