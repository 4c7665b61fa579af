"""a rectification keeps when each field was asked for

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 08:00:00

``rights_request.asked_at``: JSON, each field of a rectification to the time its value was
asked for (names and times only), kept when the values are blanked on completion. Joined
rectifications take per field the value asked for last, and one dated before a completed
rectification does not undo what that corrected, whichever arrived first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rights_request", schema=None) as batch_op:
        batch_op.add_column(sa.Column("asked_at", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rights_request", schema=None) as batch_op:
        batch_op.drop_column("asked_at")
