"""What the deletion rules of the catalogue find in the database (``core.catalogue.RULES``).

Per rule id: ``due`` — what must be deleted by `today` (the rules ``enforce-retention``
executes itself), and ``overdue`` — what should have been deleted before `today` and is
still there (every rule with a period; ``psync retention check`` reports them). Both take the
period in force (``DeletionRule.days(settings)``) and a Berlin calendar day, so tests set the
clock: on the day before the due day a record is kept, on the due day it is deleted.

A TIMIFY customer (rule R06) is due N days after the end of their last appointment: day 0
is the Berlin day the last appointment ended. Subjects with an open erasure request are left
to the erasure, which deletes and reports them itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from models.bookings import PURPOSE as BOOKING_PURPOSE
from models.bookings import Booking
from models.consent import ConsentRecord, ConsentState
from models.erasure import being_erased
from models.isic import IsicOrder
from models.recipients import Recipient
from models.subjects import DataSubject
from models.types import BERLIN


@dataclass(frozen=True)
class Due:
    """One subject's data due at a processor: enough for its eraser, nothing more."""

    subject_id: uuid.UUID
    pseudonym: str
    purpose: str
    external_id: str | None
    local: tuple[tuple[str, str | None], ...]  # (our booking ref, the processor's id or None)


def _ended_day(start_at: datetime, duration_min: int) -> date:
    return (start_at + timedelta(minutes=duration_min)).astimezone(BERLIN).date()


def timify_customers_due(session: Session, today: date, days: int) -> list[Due]:
    """Customers still at TIMIFY whose last appointment ended `days` or more days before
    `today` (Berlin), with the appointments to delete there. Not those being erased."""
    rows = session.exec(
        select(Recipient.subject_id, Recipient.external_id, DataSubject.pseudonym)
        .join(DataSubject, col(DataSubject.id) == col(Recipient.subject_id))
        .where(
            Recipient.processor == "timify",
            Recipient.purpose == BOOKING_PURPOSE,
            col(Recipient.removed_at).is_(None),
        )
    ).all()
    erasing = being_erased(session)
    due = []
    for subject_id, external_id, pseudonym in rows:
        if subject_id in erasing:
            continue
        bookings = list(session.exec(select(Booking).where(Booking.subject_id == subject_id)))
        if not bookings:
            continue
        last = max(_ended_day(b.start_at, b.duration_min) for b in bookings)
        if today >= last + timedelta(days=days):
            local = tuple((b.booking_ref, b.timify_appointment_id) for b in bookings if b.timify_deleted_at is None)
            due.append(Due(subject_id, pseudonym, BOOKING_PURPOSE, external_id, local))
    return due


def mark_timify_deleted(session: Session, subject_id: uuid.UUID, now: datetime) -> None:
    """The subject's bookings are gone at TIMIFY (the push and the erasure must know)."""
    for booking in session.exec(select(Booking).where(Booking.subject_id == subject_id)):
        booking.timify_deleted_at = booking.timify_deleted_at or now


# Rules enforce-retention executes: rule id -> (what is due, what to note once deleted).
EXECUTED: dict[
    str, tuple[Callable[[Session, date, int], list[Due]], Callable[[Session, uuid.UUID, datetime], None]]
] = {
    "R06": (timify_customers_due, mark_timify_deleted),
}


def _berlin_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=BERLIN)


def _optins_overdue(list_name: str) -> Callable[[Session, date, int], int]:
    def count(session: Session, today: date, days: int) -> int:
        # Overdue: the due day (sign-up + days, Berlin) lies before today.
        bound = _berlin_midnight(today - timedelta(days=days))
        return session.exec(
            select(func.count()).where(
                ConsentRecord.list_name == list_name,
                ConsentRecord.state == ConsentState.pending,
                col(ConsentRecord.signup_at) < bound,
            )
        ).one()

    return count


def _chats_overdue(session: Session, today: date, days: int) -> int:
    return session.exec(
        select(func.count()).where(
            col(Booking.flexperto_customer_id).is_not(None),
            col(Booking.chat_purged_at).is_(None),
            col(Booking.chat_purge_due) < today,
        )
    ).one()


def _documents_overdue(session: Session, today: date, days: int) -> int:
    return session.exec(
        select(func.count()).where(
            col(IsicOrder.documents_purge_due) < today,
            col(IsicOrder.documents_purged_at).is_(None),
        )
    ).one()


def _timify_overdue(session: Session, today: date, days: int) -> int:
    return len(timify_customers_due(session, today - timedelta(days=1), days))


# Every rule with a period: how many records are past it. Rules without one (on withdrawal,
# on request) are watched by their own jobs (the consent sync, the erasure deadline watch).
OVERDUE: dict[str, Callable[[Session, date, int], int]] = {
    "R01": _optins_overdue("newsletter"),
    "R02": _optins_overdue("service_offers"),
    "R06": _timify_overdue,
    "R07": _chats_overdue,
    "R08": _documents_overdue,
}
