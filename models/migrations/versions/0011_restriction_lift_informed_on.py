"""the day the person was told of a restriction's lift

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 09:10:00

Art. 18(3) GDPR: a person who obtained a restriction is informed before it is lifted.
``restriction.lift_informed_on`` keeps that Berlin calendar day; every lift requires it.
Lifts recorded before this revision have none.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("restriction", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lift_informed_on", sa.Date(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("restriction", schema=None) as batch_op:
        batch_op.drop_column("lift_informed_on")
