"""consent texts by policy version (proof of consent)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 06:10:00

``consent_text``: per policy version the consent text shown at sign-up and the
double-opt-in mail, each with its SHA-256, and the date it took effect; immutable once
registered. The texts shipped with psync are registered by ``psync db upgrade`` after the
migrations (``models.consent_text.register_shipped``), not here: a migration is frozen, and
a later release ships its new versions without a migration.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import models.types

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consent_text",
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("consent_text", sa.Text(), nullable=False),
        sa.Column("consent_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("mail_text", sa.Text(), nullable=False),
        sa.Column("mail_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        sa.Column("registered_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )


def downgrade() -> None:
    op.drop_table("consent_text")
