"""The recipient register (Art. 19 GDPR): which processor received which subject's data.

One row per subject, processor and purpose. Jobs call ``record_sent`` after a successful
transfer and ``record_removed`` after the processor confirmed removal; the erasure fan-out
reads the rows whose ``removed_at`` is empty.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import UniqueConstraint, bindparam, func, insert, update
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


def record_sent_many(
    session: Session,
    processor: str,
    purpose: str,
    sent: dict[uuid.UUID, str | None],
    now: datetime,
) -> None:
    """Note that the processor now holds these subjects' data (subject id → external id).

    Two statements for the whole batch, whatever its size: building one ORM object per
    row cost more than the call to the processor did.
    """
    if not sent:
        return
    existing = set(
        session.exec(
            select(Recipient.subject_id).where(
                Recipient.processor == processor,
                Recipient.purpose == purpose,
                Recipient.subject_id.in_(list(sent)),  # type: ignore[attr-defined]
            )
        )
    )
    fresh = [
        {"id": new_id(), "subject_id": sid, "processor": processor, "purpose": purpose,
         "external_id": ext, "first_sent_at": now, "last_sent_at": now, "removed_at": None}
        for sid, ext in sent.items() if sid not in existing
    ]  # fmt: skip
    if fresh:
        session.execute(insert(Recipient), fresh)
    if existing:
        table = Recipient.__table__  # type: ignore[attr-defined]
        session.execute(
            update(table)
            .where(
                table.c.processor == processor,
                table.c.purpose == purpose,
                table.c.subject_id == bindparam("sid"),
            )
            .values(
                external_id=func.coalesce(bindparam("ext"), table.c.external_id),
                last_sent_at=now,
                removed_at=None,
            ),
            [{"sid": sid, "ext": sent[sid]} for sid in existing],
        )


def record_removed(recipient: Recipient, now: datetime) -> None:
    """Note that the processor confirmed it no longer holds the data."""
    recipient.removed_at = now


def _live_without_consent(processor: str, purpose: str, confirmed_subjects):
    return (
        Recipient.processor == processor,
        Recipient.purpose == purpose,
        Recipient.removed_at.is_(None),  # type: ignore[union-attr]
        Recipient.subject_id.not_in(confirmed_subjects),  # type: ignore[attr-defined]
    )


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
        .where(*_live_without_consent(processor, purpose, confirmed_subjects))
        .order_by(Recipient.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Recipient.id > after)
    return list(session.exec(query).all())


def count_live_recipients_without_consent(
    session: Session, processor: str, purpose: str, confirmed_subjects
) -> int:
    """How many rows `live_recipients_without_consent` would page through."""
    return session.exec(
        select(func.count()).where(
            *_live_without_consent(processor, purpose, confirmed_subjects)
        )
    ).one()
