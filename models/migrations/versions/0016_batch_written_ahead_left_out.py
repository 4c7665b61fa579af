"""the mark of a batch written ahead says whom it left out

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 07:30:00

A batch that writes the next one ahead leaves out whoever is being erased or held back
(``flows.delivery._write_next_ahead``). ``sync_cursor.ahead_left_out`` names them (JSON:
the subject ids, by why), so the next batch's sending step holds them too, even if the
restriction was lifted in between: nothing of theirs was written ahead.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_cursor", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ahead_left_out", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_cursor", schema=None) as batch_op:
        batch_op.drop_column("ahead_left_out")
