"""addresses a rectification corrected keep finding their person for lines dated before it

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 14:00:00

``address_alias``: the pseudonym of an address a subject had until a rectification corrected
it or an erasure cleared it, and until when. A withdrawal or an erasure request dated by then,
arriving later under that address, is the person's (``models.subjects.AddressAlias``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import models.types

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "address_alias",
        sa.Column("pseudonym", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("until", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["subject_id"], ["data_subject.id"]),
        sa.PrimaryKeyConstraint("pseudonym", "subject_id", "until"),
    )


def downgrade() -> None:
    op.drop_table("address_alias")
