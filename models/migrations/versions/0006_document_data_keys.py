"""document data keys (crypto-shredding)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 00:40:00

Each document gets a data key of its own, wrapped by the master key, in ``document_key``;
``isic_document.key_id`` points at it. Documents stored before stay encrypted with the
master key (``key_id`` NULL) and readable; ``psync documents rotate-key`` gives them keys.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "document_key",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("isic_document", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.Uuid(), nullable=True))
        batch_op.create_foreign_key("fk_isic_document_key_id_document_key", "document_key", ["key_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("isic_document", schema=None) as batch_op:
        batch_op.drop_constraint("fk_isic_document_key_id_document_key", type_="foreignkey")
        batch_op.drop_column("key_id")
    op.drop_table("document_key")
