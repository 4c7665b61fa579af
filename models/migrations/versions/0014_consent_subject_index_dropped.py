"""the consent record's subject index dropped: its unique key starts with the subject

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 12:00:00

``ix_consent_subject_id`` duplicated the first column of the unique key (subject_id,
list_name), which answers every lookup by subject (intake's prefetch, the proof of consent,
erasure, the newsletter's lapsed check) as well, and serves the foreign key. Every consent
record intake inserts paid for both: one index fewer to write per sign-up.

The other indexes of the tables intake writes are each read by a query: the state and the
sign-up time (expiry, retention, the lapsed subjects), the change number (the sync's
cursor), the event's record (the history), and the unique keys.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("consent", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_subject_id"))


def downgrade() -> None:
    with op.batch_alter_table("consent", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consent_subject_id"), ["subject_id"], unique=False)
