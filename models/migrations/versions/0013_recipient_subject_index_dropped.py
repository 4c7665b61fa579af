"""the register's subject index dropped: its unique key starts with the subject

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 10:00:00

``ix_recipient_subject_id`` duplicated the first column of the unique key (subject,
processor, purpose), which answers every lookup by subject as well. Each register row
written (a full newsletter sync writes two per subscriber) paid for both: one index fewer
to update, and one fewer random page per row in an incremental sync's WAL.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("recipient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recipient_subject_id"))


def downgrade() -> None:
    with op.batch_alter_table("recipient", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recipient_subject_id"), ["subject_id"], unique=False)
