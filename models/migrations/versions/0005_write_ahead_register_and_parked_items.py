"""write-ahead register (recipient.confirmed_at) and parked items

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 22:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import models.types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("recipient", schema=None) as batch_op:
        batch_op.add_column(sa.Column("confirmed_at", models.types.UTCDateTime(timezone=True), nullable=True))
    # Every row written before this revision was written after the processor confirmed.
    op.execute("UPDATE recipient SET confirmed_at = last_sent_at")

    op.create_table(
        "parked_item",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
        sa.Column("record_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("processor", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("operation", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_tried_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_tried_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("drop_reason", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job", "record_id"),
    )
    with op.batch_alter_table("parked_item", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_parked_item_job"), ["job"], unique=False)
        batch_op.create_index(batch_op.f("ix_parked_item_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("parked_item", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_parked_item_state"))
        batch_op.drop_index(batch_op.f("ix_parked_item_job"))
    op.drop_table("parked_item")
    with op.batch_alter_table("recipient", schema=None) as batch_op:
        batch_op.drop_column("confirmed_at")
