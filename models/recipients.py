"""The recipient register (Art. 19 GDPR): which processor received which subject's data.

One row per subject, processor and purpose, in one of three states:

- **may hold**: written ahead (``record_may_hold_many``, committed before the first call that
  can carry the person's data there), so no crash, fault or rollback hides data from an
  erasure; ``confirmed_at`` is empty;
- **holds**: the processor confirmed it (``record_sent_many``), ``confirmed_at`` set;
- **removed**: the processor confirmed removal (``record_removed``), ``removed_at`` set.

The erasure fan-out treats every row whose ``removed_at`` is empty as live, "may hold" as
"holds": it deletes there and verifies by reading back (an absent record is a verified
erasure).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import cache
from operator import attrgetter

from sqlalchemy import UniqueConstraint, case, func, null, update
from sqlalchemy.sql.dml import Insert
from sqlmodel import Field, Relationship, Session, SQLModel, col, select

from core.catalogue import co_recipients
from models.audit import insert_many
from models.db import INSERT_BY_DIALECT, skip_locked
from models.subjects import DataSubject
from models.types import UTCDateTime, classify, new_id


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
    # Empty while the row only says "may hold" (written ahead of the call).
    confirmed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    removed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    subject: DataSubject = Relationship()


classify(
    Recipient,
    pseudonymous=["id", "subject_id", "purpose", "external_id"],
    not_personal=["processor", "first_sent_at", "last_sent_at", "confirmed_at", "removed_at"],
)


# Ids per statement when selecting or updating by id: bound parameters stay far below
# SQLite's and PostgreSQL's limits however many rows a batch holds.
_IDS_PER_STATEMENT = 1000


def record_sent_many(
    session: Session,
    processor: str,
    purpose: str,
    sent: dict[uuid.UUID, str | None],
    now: datetime,
) -> None:
    """Note that the processor now holds these subjects' data (subject id → external id).

    One INSERT … ON CONFLICT DO UPDATE for the whole batch (SQLite and PostgreSQL): a new
    subject gets its row; a known one keeps its first-sent time and id, gets the new
    external id if the processor named one, and is live again.
    """
    _insert_rows(session, _upsert, processor, purpose, sent, now, confirmed_at=now)


def record_confirmed_many(
    session: Session, processor: str, purpose: str, subject_ids: Sequence[uuid.UUID], now: datetime
) -> None:
    """ "May hold" becomes "holds" for these subjects, whose rows were written ahead
    (``record_may_hold_many``): the processor answered for them. Set-based, a statement per
    thousands of subjects, for a processor whose records need no id of ours (CleverReach
    keys a receiver by its address in the group).
    """
    table = Recipient.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    ordered = sorted(subject_ids, key=attrgetter("int"))  # the index's order: pages read once
    for start in range(0, len(ordered), _CONFIRM_PER_STATEMENT):
        session.connection().execute(
            update(table)
            .where(
                table.c.subject_id.in_(ordered[start : start + _CONFIRM_PER_STATEMENT]),
                table.c.processor == processor,
                table.c.purpose == purpose,
            )
            .values(confirmed_at=now, last_sent_at=now, removed_at=None)
        )


# Subjects per confirming UPDATE: far below SQLite's 32,766 and PostgreSQL's 65,535 bound
# parameters, few statements per wave.
_CONFIRM_PER_STATEMENT = 5000


def record_may_hold_many(
    session: Session, processor: str, purpose: str, subjects: dict[uuid.UUID, str | None], now: datetime
) -> None:
    """Write ahead: these subjects' data may reach the processor (subject id → external id,
    if known). Commit before the first call that can carry it.

    One INSERT … ON CONFLICT for the batch: a new subject gets a "may hold" row; a live row
    stays as it is (a "holds" stays "holds"); a removed one is live again as "may hold".
    """
    _insert_rows(session, _write_ahead, processor, purpose, subjects, now, confirmed_at=None)


def _insert_rows(
    session: Session,
    statement: Callable[[str], Insert],
    processor: str,
    purpose: str,
    subjects: dict[uuid.UUID, str | None],
    now: datetime,
    confirmed_at: datetime | None,
) -> None:
    """One INSERT … ON CONFLICT (`statement`, by dialect) for these subjects' rows.

    Whoever works on this processor's data for the purpose (``core.catalogue``: USU on the
    newsletter at CleverReach) gets a "may hold" row too, in the same transaction.
    """
    if not subjects:
        return
    for other in co_recipients(processor, purpose):
        _insert_rows(session, _write_ahead, other, purpose, dict.fromkeys(subjects), now, confirmed_at=None)
    # In subject order: both indexes the statement touches are keyed by subject, and sorted
    # inserts reuse the pages they just read instead of fetching one per row.
    ordered = sorted(subjects, key=attrgetter("int"))
    insert_many(
        session,
        statement(session.get_bind().dialect.name),
        ("id", "subject_id", "external_id"),
        list(zip(_ascending_ids(len(ordered)), ordered, map(subjects.get, ordered), strict=True)),
        {
            "processor": processor,
            "purpose": purpose,
            "first_sent_at": now,
            "last_sent_at": now,
            "confirmed_at": confirmed_at,
        },
    )


def _ascending_ids(count: int) -> list[uuid.UUID]:
    """`count` fresh ids in ascending order, UUIDv7 layout (RFC 9562): Unix milliseconds,
    then random bits, here a random start counted up. New register rows then extend the
    primary-key index at its end instead of dirtying a random page of it per row.
    """
    millis = time.time_ns() // 1_000_000
    head = (millis & (2**48 - 1)) << 80 | 0x7 << 76 | secrets.randbits(12) << 64 | 0b10 << 62
    start = secrets.randbits(62)
    return [uuid.UUID(int=head | (start + i) % 2**62) for i in range(count)]


@cache
def _upsert(dialect: str) -> Insert:
    """INSERT … ON CONFLICT (subject, processor, purpose) DO UPDATE, in the dialect's syntax."""
    table = Recipient.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    statement = INSERT_BY_DIALECT[dialect](table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.subject_id, table.c.processor, table.c.purpose],
        set_={
            "external_id": func.coalesce(statement.excluded.external_id, table.c.external_id),
            "last_sent_at": statement.excluded.last_sent_at,
            "confirmed_at": statement.excluded.confirmed_at,
            "removed_at": null(),
        },
    )


@cache
def _write_ahead(dialect: str) -> Insert:
    """INSERT … ON CONFLICT DO UPDATE that makes a row live without un-confirming it."""
    table = Recipient.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    statement = INSERT_BY_DIALECT[dialect](table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.subject_id, table.c.processor, table.c.purpose],
        set_={
            "external_id": func.coalesce(table.c.external_id, statement.excluded.external_id),
            "confirmed_at": case((table.c.removed_at.is_(None), table.c.confirmed_at), else_=null()),
            "removed_at": null(),
        },
    )


def live_keys(session: Session, processor: str, purpose: str, subject_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The subjects among `subject_ids` with a live row for this processor and purpose
    ("may hold" or "holds"): what may be sent there now without writing ahead first."""
    live: set[uuid.UUID] = set()
    for start in range(0, len(subject_ids), _IDS_PER_STATEMENT):
        live.update(
            session.connection()
            .execute(
                select(Recipient.subject_id).where(
                    col(Recipient.subject_id).in_(subject_ids[start : start + _IDS_PER_STATEMENT]),
                    Recipient.processor == processor,
                    Recipient.purpose == purpose,
                    col(Recipient.removed_at).is_(None),
                )
            )
            .scalars()
        )
    return live


def record_removed(recipient: Recipient, now: datetime) -> None:
    """Note that the processor confirmed it no longer holds the data."""
    recipient.removed_at = now


def record_removed_for(session: Session, subject_id: uuid.UUID, processor: str, purpose: str, now: datetime) -> None:
    """``record_removed`` for the row of this subject, processor and purpose, if there is one."""
    row = session.exec(
        select(Recipient).where(
            Recipient.subject_id == subject_id,
            Recipient.processor == processor,
            Recipient.purpose == purpose,
        )
    ).first()
    if row is not None:
        record_removed(row, now)


def record_removed_many(session: Session, ids: Iterable[uuid.UUID], now: datetime) -> int:
    """``record_removed`` for many register rows by id, without loading them; returns how many."""
    ids = list(ids)
    table = Recipient.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        chunk = ids[start : start + _IDS_PER_STATEMENT]
        session.connection().execute(update(table).where(table.c.id.in_(chunk)).values(removed_at=now))
    return len(ids)


def live_recipient_ids_among(session: Session, processor: str, purpose: str, subjects) -> list[uuid.UUID]:
    """Ids, ascending, of register rows still live at a processor for this purpose whose
    subject is in `subjects` (a subquery of subject ids, e.g. those whose consent lapsed:
    ``models.consent.lapsed_subject_ids``): what the processor must no longer hold.
    """
    # IN (subquery) rather than a join: SQLite then walks the subjects and probes the
    # register's (subject, processor, purpose) key for each, instead of reading every live
    # row of the processor (0.15 s per 100,000 subscribers, on every run).
    query = (
        select(Recipient.id)
        .where(
            col(Recipient.subject_id).in_(subjects),
            Recipient.processor == processor,
            Recipient.purpose == purpose,
            col(Recipient.removed_at).is_(None),
        )
        .order_by(col(Recipient.id))
    )
    return list(session.connection().execute(query).scalars())


def live_recipients(session: Session, processor: str, purpose: str, ids: Sequence[uuid.UUID]) -> list:
    """The register rows among `ids` still live at this processor for this purpose, with
    their subjects' address and pseudonym: rows of (id, external_id, subject_id, email,
    pseudonym), in id order. Plain rows (Core): the ORM's loading would cost more than the query.

    Claimed (``skip_locked``): two workers that listed the same ids split them instead of
    both removing a receiver; a row another worker holds is left to it, and once it commits
    the row is no longer live.
    """
    found: list = []
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        query = (
            select(  # type: ignore[call-overload]  # sqlmodel's select is typed for at most 4 columns
                Recipient.id,
                Recipient.external_id,
                Recipient.subject_id,
                DataSubject.email,
                DataSubject.pseudonym,
                Recipient.processor,
                Recipient.purpose,
            )
            .join(DataSubject, DataSubject.id == Recipient.subject_id)
            .where(
                col(Recipient.id).in_(ids[start : start + _IDS_PER_STATEMENT]),
                col(Recipient.removed_at).is_(None),
            )
        )
        # Processor and purpose compared here: in the query, they make SQLite read every
        # row of the processor through its index instead of the ids through the key.
        found += [
            row
            for row in session.connection().execute(skip_locked(query, Recipient))
            if (row.processor, row.purpose) == (processor, purpose)
        ]
    return sorted(found, key=lambda row: row.id.int)


def live_for_other_purposes(
    session: Session, processor: str, purpose: str, subject_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """The subjects among `subject_ids` the processor still holds for another purpose."""
    held: set[uuid.UUID] = set()
    for start in range(0, len(subject_ids), _IDS_PER_STATEMENT):
        held.update(
            session.connection()
            .execute(
                select(Recipient.subject_id).where(
                    col(Recipient.subject_id).in_(subject_ids[start : start + _IDS_PER_STATEMENT]),
                    Recipient.processor == processor,
                    Recipient.purpose != purpose,
                    col(Recipient.removed_at).is_(None),
                )
            )
            .scalars()
        )
    return held
