"""The recipient register (Art. 19 GDPR): which processor received which subject's data.

One row per subject, processor and purpose. Jobs call ``record_sent`` after a successful
transfer and ``record_removed`` after the processor confirmed removal; the erasure fan-out
reads the rows whose ``removed_at`` is empty.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, Relationship, Session, SQLModel, select

from models.subjects import DataSubject

from models.types import UTCDateTime, new_id


class Recipient(SQLModel, table=True):
    __tablename__ = "recipient"
    __table_args__ = (UniqueConstraint("subject_id", "processor", "purpose"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id", index=True)
    processor: str = Field(max_length=40, index=True)
    purpose: str = Field(max_length=60)
    external_id: str | None = Field(default=None, max_length=200)
    first_sent_at: datetime = Field(sa_type=UTCDateTime)
    last_sent_at: datetime = Field(sa_type=UTCDateTime)
    removed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    subject: DataSubject = Relationship()


def load_recipients(
    session: Session, processor: str, purpose: str, subject_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Recipient]:
    """The register rows of these subjects at one processor and purpose, by subject id."""
    if not subject_ids:
        return {}
    rows = session.exec(
        select(Recipient).where(
            Recipient.processor == processor,
            Recipient.purpose == purpose,
            Recipient.subject_id.in_(subject_ids),  # type: ignore[attr-defined]
        )
    )
    return {row.subject_id: row for row in rows}


def record_sent(
    session: Session,
    existing: Recipient | None,
    subject_id: uuid.UUID,
    processor: str,
    purpose: str,
    external_id: str | None,
    now: datetime,
) -> Recipient:
    """Note that the processor now holds this subject's data (again)."""
    if existing is None:
        existing = Recipient(
            subject_id=subject_id,
            processor=processor,
            purpose=purpose,
            first_sent_at=now,
            last_sent_at=now,
        )
        session.add(existing)
    existing.external_id = external_id or existing.external_id
    existing.last_sent_at = now
    existing.removed_at = None
    return existing


def record_removed(recipient: Recipient, now: datetime) -> None:
    """Note that the processor confirmed it no longer holds the data."""
    recipient.removed_at = now


def live_recipients_without_consent(
    session: Session,
    processor: str,
    purpose: str,
    confirmed_subjects,
    after: uuid.UUID | None,
    limit: int,
) -> list[tuple[Recipient, DataSubject]]:
    """Register rows still live at a processor whose subject is not in `confirmed_subjects`.

    `confirmed_subjects` is a subquery of subject ids that may stay; everything else the
    processor still holds for this purpose must be removed there. Keyset-paged by id so a
    row whose removal failed is not picked again in the same run.
    """
    query = (
        select(Recipient, DataSubject)
        .join(DataSubject, DataSubject.id == Recipient.subject_id)
        .where(
            Recipient.processor == processor,
            Recipient.purpose == purpose,
            Recipient.removed_at.is_(None),  # type: ignore[union-attr]
            Recipient.subject_id.not_in(confirmed_subjects),  # type: ignore[attr-defined]
        )
        .order_by(Recipient.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Recipient.id > after)
    return list(session.exec(query).all())
