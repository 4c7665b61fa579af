"""a booking keeps when it was cancelled apart from when its start was set

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 09:00:00

``booking.cancelled_at``: the earliest cancellation's event time. ``updated_at`` is now the
time of the request or reschedule that set the start, so a cancelled booking ends at the
start of its latest reschedule by event time whatever order the lines arrive in. A booking
cancelled before this revision gets its ``updated_at`` as ``cancelled_at``: what it knew.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("booking", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancelled_at", models.types.UTCDateTime(timezone=True), nullable=True))
    op.execute("UPDATE booking SET cancelled_at = updated_at WHERE status = 'cancelled'")


def downgrade() -> None:
    with op.batch_alter_table("booking", schema=None) as batch_op:
        batch_op.drop_column("cancelled_at")
