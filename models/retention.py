"""What the deletion rules of the catalogue find in the database (``core.catalogue.RULES``).

Per rule id: ``due`` — what must be deleted by `today` (the rules ``enforce-retention``
executes itself), and ``overdue`` — what should have been deleted before `today` and is
still there (every rule with a period; ``psync retention check`` reports them). Both take the
period in force (``DeletionRule.days(settings)``) and a Berlin calendar day, so tests set the
clock: on the day before the due day a record is kept, on the due day it is deleted.

A TIMIFY customer (rule R06) is due N days after the end of their last appointment: day 0
is the Berlin day the last appointment ended. Subjects with an open erasure request are left
to the erasure, which deletes and reports them itself.

A restricted person's records (Art. 18(1)(b), (c): kept, not erased, while the restriction
lasts; ``models.restriction``) are neither due nor overdue: ``HELD`` counts them per rule
("held by restriction"). Once the restriction is lifted the next run deletes what is due.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, func
from sqlmodel import Session, col, select

from models.bookings import PURPOSE as BOOKING_PURPOSE
from models.bookings import Booking
from models.consent import UNCONFIRMED, ConsentRecord
from models.erasure import being_erased
from models.isic import IsicOrder
from models.recipients import Recipient
from models.restriction import restricted, restricted_subject
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
    `today` (Berlin), with the appointments to delete there. Not those being erased, nor
    those restricted (kept until the restriction is lifted)."""
    return _timify_due(session, today, days, held=False)


def _timify_due(session: Session, today: date, days: int, held: bool) -> list[Due]:
    """``timify_customers_due``; with `held`, only the restricted ones it leaves out."""
    rows = session.exec(
        select(Recipient.subject_id, Recipient.external_id, DataSubject.pseudonym)
        .join(DataSubject, col(DataSubject.id) == col(Recipient.subject_id))
        .where(
            Recipient.processor == "timify",
            Recipient.purpose == BOOKING_PURPOSE,
            col(Recipient.removed_at).is_(None),
        )
    ).all()
    erasing, paused = being_erased(session), restricted(session)
    due = []
    for subject_id, external_id, pseudonym in rows:
        if subject_id in erasing or (subject_id in paused) != held:
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


Count = Callable[[Session, date, int], int]


def _held(condition: Any, subject_column: Any, held: bool) -> Any:
    """`condition` and: the subject restricted (`held`) or not."""
    restricted_now = restricted_subject(subject_column)
    return and_(condition, restricted_now if held else ~restricted_now)


def _optins_past(list_name: str, held: bool) -> Count:
    def count(session: Session, today: date, days: int) -> int:
        # Past the period: the due day (sign-up + days, Berlin) lies before today.
        bound = _berlin_midnight(today - timedelta(days=days))
        past = and_(
            col(ConsentRecord.list_name) == list_name,
            col(ConsentRecord.state).in_(UNCONFIRMED),
            col(ConsentRecord.signup_at) < bound,
        )
        return session.exec(select(func.count()).where(_held(past, col(ConsentRecord.subject_id), held))).one()

    return count


def _chats_past(held: bool) -> Count:
    def count(session: Session, today: date, days: int) -> int:
        past = and_(
            col(Booking.flexperto_customer_id).is_not(None),
            col(Booking.chat_purged_at).is_(None),
            col(Booking.chat_purge_due) < today,
        )
        return session.exec(select(func.count()).where(_held(past, col(Booking.subject_id), held))).one()

    return count


def _documents_past(held: bool) -> Count:
    def count(session: Session, today: date, days: int) -> int:
        past = and_(col(IsicOrder.documents_purge_due) < today, col(IsicOrder.documents_purged_at).is_(None))
        return session.exec(select(func.count()).where(_held(past, col(IsicOrder.subject_id), held))).one()

    return count


def _timify_past(held: bool) -> Count:
    def count(session: Session, today: date, days: int) -> int:
        return len(_timify_due(session, today - timedelta(days=1), days, held))

    return count


def _rules(held: bool) -> dict[str, Count]:
    """Every rule with a period, by its id: how many records are past it (`held`: of those,
    how many are kept because their subject is restricted)."""
    return {
        "R01": _optins_past("newsletter", held=held),
        "R02": _optins_past("service_offers", held=held),
        "R06": _timify_past(held=held),
        "R07": _chats_past(held=held),
        "R08": _documents_past(held=held),
    }


# Every rule with a period: how many records are past it. Rules without one (on withdrawal,
# on request) are watched by their own jobs (the consent sync, the erasure deadline watch).
OVERDUE = _rules(held=False)
# The same rules: how many records past the period are kept because their subject is
# restricted (Art. 18): lawfully kept, not overdue; reported beside it, counts only.
HELD = _rules(held=True)
