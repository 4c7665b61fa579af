"""the next batch written ahead, marked on its cursor

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 07:00:00

A batch that sends in bulk writes the next batch's "may hold" register rows while its own
calls are on the wire; ``sync_cursor.ahead_*`` says which records that covered, so the next
batch does not write them again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_cursor", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ahead_after", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("ahead_through", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("ahead_count", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_cursor", schema=None) as batch_op:
        batch_op.drop_column("ahead_count")
        batch_op.drop_column("ahead_through")
        batch_op.drop_column("ahead_after")
