"""the fields a rectification corrected, by name

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 09:30:00

``rights_request.corrected``: the names (never the values) of the fields a completed
rectification corrected in the controller's copy. The new values are blanked on completion;
the names stay, so the proof of consent can say that the address was corrected, and when.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rights_request", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("corrected", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("rights_request", schema=None) as batch_op:
        batch_op.drop_column("corrected")
