"""restriction of processing (Art. 18)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 07:00:00

``restriction``: who is restricted since when and why, and when and why it was lifted
(pseudonymous only). ``restriction_hold``: the records a job held back meanwhile, handed to
the retry queue when the restriction is lifted.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "restriction",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=True),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("restricted_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deactivated", sa.String(length=4000), nullable=False),
        sa.Column("lifted_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("lift_reason", sa.String(length=300), nullable=True),
        sa.Column("lift_recorded_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["subject_id"], ["data_subject.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_restriction_subject_id"), "restriction", ["subject_id"], unique=False)
    op.create_index(op.f("ix_restriction_request_id"), "restriction", ["request_id"], unique=False)
    op.create_index(op.f("ix_restriction_lifted_at"), "restriction", ["lifted_at"], unique=False)
    op.create_table(
        "restriction_hold",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("job", sa.String(length=60), nullable=False),
        sa.Column("record_id", sa.String(length=100), nullable=False),
        sa.Column("held_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("released_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["subject_id"], ["data_subject.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job", "record_id"),
    )
    op.create_index(op.f("ix_restriction_hold_subject_id"), "restriction_hold", ["subject_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_restriction_hold_subject_id"), table_name="restriction_hold")
    op.drop_table("restriction_hold")
    op.drop_index(op.f("ix_restriction_lifted_at"), table_name="restriction")
    op.drop_index(op.f("ix_restriction_request_id"), table_name="restriction")
    op.drop_index(op.f("ix_restriction_subject_id"), table_name="restriction")
    op.drop_table("restriction")
