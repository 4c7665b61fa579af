"""Restriction of processing (Art. 18 GDPR): who is restricted, since when, why, and what
the jobs held back meanwhile.

A ``Restriction`` row marks the subject restricted from ``restricted_at`` until an officer
lifts it (``lifted_at``, with its reason and the day the person was told beforehand,
``lift_informed_on``: Art. 18(3)). Pseudonymous only: the subject's id, the rights
request's id, the officer's reasons (checked free text, no personal data), dates, and which
processor records were made inactive (``deactivated``: "processor purpose" lines).

While a subject is restricted the delivery path sends nothing new of theirs
(``flows.delivery``): each record it would have sent is noted here (``RestrictionHold``,
job and record id) instead of being sent, parked or passed over. Lifting the restriction
hands those records to the jobs' retry queue (``models.parked``): their next runs send
them first, as they are then.

Nor do the retention purges delete it (``restricted_subject``: the opt-in expiry, the video
chat and student-ID document purges, the TIMIFY retention rule): a restricted record is
held, counted as "held by restriction", not overdue; the first run after the lift deletes
what is due by then.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, UniqueConstraint, exists
from sqlmodel import Field, Session, SQLModel, col, select

from models.parked import ParkedItem, ParkState
from models.types import BERLIN, UTCDateTime, classify, new_id

MAX_REASON = 300


# The operation of a retry item a lifted restriction queued: nothing was tried, nothing failed.
RELEASED = "restriction"


class Restriction(SQLModel, table=True):
    __tablename__ = "restriction"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id", index=True)
    # The rights request that asked for it (``models.rights``), when one did.
    request_id: uuid.UUID | None = Field(default=None, index=True)
    reason: str = Field(default="", max_length=MAX_REASON)
    restricted_at: datetime = Field(sa_type=UTCDateTime)
    recorded_at: datetime = Field(sa_type=UTCDateTime)
    # "processor purpose" per line: the records made inactive at processors (reactivated on lift).
    deactivated: str = Field(default="", max_length=4000)
    lifted_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    lift_reason: str | None = Field(default=None, max_length=MAX_REASON)
    lift_recorded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The Berlin calendar day the person was told the restriction would be lifted (Art. 18(3):
    # informed before the lift); required by every lift (``check_informed_on``).
    lift_informed_on: date | None = None

    def deactivated_at(self) -> list[tuple[str, str]]:
        """(processor, purpose) of every record made inactive for this restriction."""
        return [tuple(line.split(" ", 1)) for line in self.deactivated.splitlines() if " " in line]  # type: ignore[misc]  # two parts by the check

    def note_deactivated(self, processor: str, purpose: str) -> None:
        line = f"{processor} {purpose}"
        if line not in self.deactivated.splitlines():
            self.deactivated = "\n".join([*self.deactivated.splitlines(), line])


classify(
    Restriction,
    pseudonymous=["id", "subject_id", "request_id", "deactivated"],
    not_personal=[
        "reason",
        "restricted_at",
        "recorded_at",
        "lifted_at",
        "lift_reason",
        "lift_recorded_at",
        "lift_informed_on",
    ],
)


class RestrictionHold(SQLModel, table=True):
    """A record a job did not send because its subject was restricted, or had a rectification
    open (``models.rights.held_back``); one per job and record. Released by the lift, or by
    the rectification's completion."""

    __tablename__ = "restriction_hold"
    __table_args__ = (UniqueConstraint("job", "record_id"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id", index=True)
    job: str = Field(max_length=60)
    record_id: str = Field(max_length=100)
    held_at: datetime = Field(sa_type=UTCDateTime)
    released_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


classify(
    RestrictionHold,
    pseudonymous=["id", "subject_id", "record_id"],
    not_personal=["job", "held_at", "released_at"],
)


def restricted(session: Session) -> set[uuid.UUID]:
    """Every subject restricted now (few: a restriction is a rare request)."""
    query = select(Restriction.subject_id).where(col(Restriction.lifted_at).is_(None))
    return set(session.exec(query))


def restricted_subject(subject_column: Any) -> ColumnElement[bool]:
    """SQL condition: the row's subject (`subject_column`) is restricted now. Negated
    (``~restricted_subject(…)``) in the retention purges' selections: a restricted person's
    data is kept, not erased, while the restriction lasts (Art. 18(1)(b), (c)); a row
    without a subject is never restricted."""
    return exists().where(Restriction.subject_id == subject_column, col(Restriction.lifted_at).is_(None))


class InformedOnError(ValueError):
    """The day the person was told of the lift (Art. 18(3)) is missing or cannot be right."""


def check_informed_on(informed_on: date | None, restricted_at: datetime, lifted_at: datetime, today: date) -> date:
    """`informed_on`, the Berlin calendar day the person was told the restriction will be
    lifted (Art. 18(3): before it is lifted), or InformedOnError saying what is wrong: none
    given, not a plain date, in the future (after `today`, Berlin), before the restriction
    began or after the lift."""
    if informed_on is None:
        raise InformedOnError(
            "informed_on is required: the day the person was told the restriction will be lifted (Art. 18(3))"
        )
    if isinstance(informed_on, datetime) or not isinstance(informed_on, date):
        raise InformedOnError("informed_on must be a calendar date (YYYY-MM-DD)")
    if informed_on > today:
        raise InformedOnError("informed_on lies in the future")
    if informed_on < restricted_at.astimezone(BERLIN).date():
        raise InformedOnError("informed_on lies before the restriction began")
    if informed_on > lifted_at.astimezone(BERLIN).date():
        raise InformedOnError("informed_on lies after the lift: the person is told before it (Art. 18(3))")
    return informed_on


def active_restriction(session: Session, subject_id: uuid.UUID) -> Restriction | None:
    """The subject's restriction in force, or None."""
    return session.exec(
        select(Restriction).where(Restriction.subject_id == subject_id, col(Restriction.lifted_at).is_(None))
    ).first()


def hold_back(session: Session, job: str, held: Iterable[tuple[str, uuid.UUID]], now: datetime) -> int:
    """Note records (record id, subject id) a job holds back for a restriction; a record
    held before and not yet released is noted once. Returns how many."""
    held = list(held)
    if not held:
        return 0
    ids = [record for record, _ in held]
    known = {
        row.record_id: row
        for row in session.exec(
            select(RestrictionHold).where(RestrictionHold.job == job, col(RestrictionHold.record_id).in_(ids))
        )
    }
    for record, subject_id in held:
        row = known.get(record)
        if row is None:
            session.add(RestrictionHold(subject_id=subject_id, job=job, record_id=record, held_at=now))
        elif row.released_at is not None:
            row.subject_id, row.held_at, row.released_at = subject_id, now, None
    return len(held)


def release(session: Session, subject_id: uuid.UUID, now: datetime, job: str | None = None) -> int:
    """Hand the subject's held records (of every job, or of `job`) to their jobs' retry queue
    (``models.parked``): each job's next run sends them first. Returns how many."""
    query = select(RestrictionHold).where(
        RestrictionHold.subject_id == subject_id, col(RestrictionHold.released_at).is_(None)
    )
    rows = list(session.exec(query.where(RestrictionHold.job == job) if job is not None else query))
    for row in rows:
        item = session.exec(
            select(ParkedItem).where(ParkedItem.job == row.job, ParkedItem.record_id == row.record_id)
        ).first()
        if item is None:
            item = ParkedItem(job=row.job, record_id=row.record_id, first_tried_at=now, last_tried_at=now)
            session.add(item)
        # Not a failure: nothing was tried. The reason says why it waited.
        item.state, item.closed_at, item.drop_reason = ParkState.retry, None, None
        item.processor, item.operation, item.reason = "", RELEASED, "held while processing was restricted"
        row.released_at = now
    return len(rows)


def lifted_holds(session: Session, job: str, still_held: set[uuid.UUID]) -> set[uuid.UUID]:
    """The subjects whose records `job` holds unreleased though they are held back no more
    (not in `still_held`, ``models.rights.held_back``).

    A lift, or a rectification's completion, releases the holds it finds; on PostgreSQL a
    batch that read the person as held back just before it committed writes its hold after
    that looked. The job's next batch releases those (``release_lifted``).
    """
    query = select(RestrictionHold.subject_id).where(
        RestrictionHold.job == job, col(RestrictionHold.released_at).is_(None)
    )
    return set(session.exec(query)) - still_held


def release_lifted(session: Session, job: str, still_held: set[uuid.UUID], now: datetime) -> int:
    """Release `job`'s holds of subjects held back no more (``lifted_holds``); how many.
    The caller holds the job's cursor: two batches of one job do not release one hold twice."""
    return sum(release(session, subject, now, job) for subject in lifted_holds(session, job, still_held))
