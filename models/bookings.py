"""Consultation bookings (seed 001): at a service point or by video, pushed to TIMIFY.

One row per booking the website handed over. The customer fields are the ones given with
this booking (seed 001: "Krankenversichertennummer oder Geburtsdatum": only what was given
is kept and sent). Every change takes the next number of the ``booking`` counter, so the push
reads "everything after my cursor", as the consent sync does.

Video consultations also go to Flexperto; what it holds about the chat is due for deletion
90 days after the consultation (``chat_purge_due``, a Europe/Berlin calendar date).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta

from sqlalchemy import func
from sqlmodel import Field, Relationship, Session, SQLModel, col, select

from models.db import skip_locked
from models.restriction import restricted_subject
from models.subjects import DataSubject
from models.types import BERLIN, UTCDateTime, classify, new_id, utcnow

PURPOSE = "booking"


class Channel(enum.StrEnum):
    branch = "branch"
    video = "video"


class BookingStatus(enum.StrEnum):
    active = "active"
    cancelled = "cancelled"


class Booking(SQLModel, table=True):
    __tablename__ = "booking"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    # The website's booking id: our external id at TIMIFY and Flexperto (not personal).
    booking_ref: str = Field(unique=True, max_length=50)
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id", index=True)
    channel: str = Field(max_length=10)  # a Channel
    service_point: str | None = Field(default=None, max_length=60)
    start_at: datetime = Field(sa_type=UTCDateTime)
    duration_min: int
    status: str = Field(default=BookingStatus.active, max_length=10)  # a BookingStatus
    seq: int = Field(index=True)

    # Customer data given with this booking; cleared on erasure.
    salutation: str | None = Field(default=None, max_length=10)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=20)
    birth_date: date | None = None
    insurance_number: str | None = Field(default=None, max_length=10)
    concern: str | None = Field(default=None, max_length=1000)

    # What the processors answered.
    timify_appointment_id: str | None = Field(default=None, max_length=40)
    timify_deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    flexperto_customer_id: str | None = Field(default=None, max_length=60)
    chat_purge_due: date | None = Field(default=None, index=True)
    chat_purged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The event time of the request or reschedule that set the start (intake.booking).
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The earliest cancellation's event time: kept apart from updated_at, so a reschedule
    # dated before it is judged against the start it would replace, in any arrival order.
    cancelled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    # Declared so the unit of work inserts a new subject before its booking.
    subject: DataSubject = Relationship()

    @property
    def video_purpose(self) -> str:
        """The register purpose of this booking's video chat at Flexperto."""
        return f"video:{self.booking_ref}"


classify(
    Booking,
    personal=["salutation", "first_name", "last_name", "phone", "birth_date", "insurance_number", "concern"],
    pseudonymous=["id", "booking_ref", "subject_id", "timify_appointment_id", "flexperto_customer_id"],
    not_personal=[
        "channel",
        "service_point",
        "start_at",
        "duration_min",
        "status",
        "seq",
        "timify_deleted_at",
        "chat_purge_due",
        "chat_purged_at",
        "created_at",
        "updated_at",
        "cancelled_at",
    ],
)


def chat_purge_due(start_at: datetime, duration_min: int, retention_days: int) -> date:
    """The Berlin calendar day on which the chat's data must be gone.

    Day 0 is the day the consultation ended; on day `retention_days` it is deleted.

    >>> from datetime import UTC
    >>> chat_purge_due(datetime(2026, 3, 1, 22, 30, tzinfo=UTC), 60, 90)
    datetime.date(2026, 5, 31)
    """
    ended = (start_at + timedelta(minutes=duration_min)).astimezone(BERLIN)
    return ended.date() + timedelta(days=retention_days)


def changed_since(session: Session, after: int, limit: int) -> list[Booking]:
    """Bookings changed after cursor position `after`, in change order."""
    query = select(Booking).where(col(Booking.seq) > after).order_by(col(Booking.seq)).limit(limit)
    return list(session.exec(query))


def count_changed_since(session: Session, after: int) -> int:
    return session.exec(select(func.count()).where(Booking.seq > after)).one()


def by_refs(session: Session, refs: Sequence[str]) -> list[Booking]:
    query = select(Booking).where(col(Booking.booking_ref).in_(list(refs)))
    return list(session.exec(query.order_by(col(Booking.seq))))


def _chat_due(today: date):
    # A restricted person's chat data is kept until the restriction is lifted (Art. 18).
    return (
        col(Booking.flexperto_customer_id).is_not(None),
        col(Booking.chat_purged_at).is_(None),
        col(Booking.chat_purge_due) <= today,
        ~restricted_subject(col(Booking.subject_id)),
    )


def chats_due(session: Session, today: date, after: int, limit: int) -> list[Booking]:
    """Video bookings whose chat data is due for deletion by `today` and not yet deleted.

    Keyset-paged by seq, so a booking whose deletion failed is not picked again in one run.
    Claimed (``skip_locked``): a second worker purging at the same time takes other bookings.
    """
    query = select(Booking).where(*_chat_due(today), col(Booking.seq) > after).order_by(col(Booking.seq)).limit(limit)
    return list(session.exec(skip_locked(query, Booking)))


def count_chats_due(session: Session, today: date) -> int:
    return session.exec(select(func.count()).where(*_chat_due(today))).one()
