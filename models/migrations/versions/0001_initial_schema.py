"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 13:06:15.012237
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import models.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_entry",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("flow_run_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("processor", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("subject_pseudonym", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
        sa.Column("prev_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_entry_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_entry_subject_pseudonym"), ["subject_pseudonym"], unique=False)

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("last_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("seal", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "counter",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "data_subject",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("pseudonym", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("insurance_number", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True),
        sa.Column("salutation", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("first_name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("last_name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("created_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("erased_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("insurance_number"),
    )
    with op.batch_alter_table("data_subject", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_data_subject_pseudonym"), ["pseudonym"], unique=True)

    op.create_table(
        "sync_cursor",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("updated_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "consent",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("list_name", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("signup_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("signup_ip", sqlmodel.sql.sqltypes.AutoString(length=45), nullable=True),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("policy_version", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("confirm_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("confirm_ip", sqlmodel.sql.sqltypes.AutoString(length=45), nullable=True),
        sa.Column("withdrawn_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("withdraw_channel", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
        sa.Column("expired_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("change_seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["data_subject.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subject_id", "list_name"),
    )
    with op.batch_alter_table("consent", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consent_change_seq"), ["change_seq"], unique=False)
        batch_op.create_index(batch_op.f("ix_consent_signup_at"), ["signup_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_consent_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_consent_subject_id"), ["subject_id"], unique=False)

    op.create_table(
        "recipient",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("processor", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
        sa.Column("external_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("first_sent_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_sent_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("removed_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["data_subject.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subject_id", "processor", "purpose"),
    )
    with op.batch_alter_table("recipient", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recipient_processor"), ["processor"], unique=False)
        batch_op.create_index(batch_op.f("ix_recipient_subject_id"), ["subject_id"], unique=False)

    op.create_table(
        "consent_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("consent_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ip", sqlmodel.sql.sqltypes.AutoString(length=45), nullable=True),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("policy_version", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("dedupe_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("recorded_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["consent_id"],
            ["consent.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key"),
    )
    with op.batch_alter_table("consent_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consent_event_consent_id"), ["consent_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("consent_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_event_consent_id"))

    op.drop_table("consent_event")
    with op.batch_alter_table("recipient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recipient_subject_id"))
        batch_op.drop_index(batch_op.f("ix_recipient_processor"))

    op.drop_table("recipient")
    with op.batch_alter_table("consent", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_subject_id"))
        batch_op.drop_index(batch_op.f("ix_consent_state"))
        batch_op.drop_index(batch_op.f("ix_consent_signup_at"))
        batch_op.drop_index(batch_op.f("ix_consent_change_seq"))

    op.drop_table("consent")
    op.drop_table("sync_cursor")
    with op.batch_alter_table("data_subject", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_subject_pseudonym"))

    op.drop_table("data_subject")
    op.drop_table("counter")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_entry_subject_pseudonym"))
        batch_op.drop_index(batch_op.f("ix_audit_entry_at"))

    op.drop_table("audit_entry")
