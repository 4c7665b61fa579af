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

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache
from operator import attrgetter

from sqlalchemy import TextClause, UniqueConstraint, bindparam, text, update
from sqlmodel import Field, Relationship, Session, SQLModel, col, select

from core.catalogue import co_recipients
from models.db import skip_locked
from models.subjects import DataSubject
from models.types import UTCDateTime, classify, new_id


class Recipient(SQLModel, table=True):
    __tablename__ = "recipient"
    __table_args__ = (UniqueConstraint("subject_id", "processor", "purpose"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    # No index of its own: the unique key below starts with it (migration 0013).
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id")
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
    record_sent_by_purpose(session, processor, {purpose: sent}, now)


def record_sent_by_purpose(
    session: Session, processor: str, by_purpose: Mapping[str, Mapping[uuid.UUID, str | None]], now: datetime
) -> None:
    """``record_sent_many`` for several purposes at once (purpose → subject id → external
    id), still one statement: a purpose per order or booking (``student-id:<order>``)
    would otherwise cost a statement per record."""
    _insert_rows(session, _upsert, processor, by_purpose, now, confirmed_at=now)


def record_confirmed_many(
    session: Session, processor: str, purpose: str, subject_ids: Sequence[uuid.UUID], now: datetime
) -> None:
    """ "May hold" becomes "holds" for these subjects, whose rows were written ahead
    (``record_may_hold_many``): the processor answered for them. Set-based, a statement per
    thousands of subjects, for a processor whose records need no id of ours (CleverReach
    keys a receiver by its address in the group).

    The ids go in as one JSON array, unpacked by the database: bound one by one, SQLAlchemy
    would render and type-process a parameter per id, which cost several times the update.
    """
    connection = session.connection()
    statement = _confirm(connection.dialect.name)
    ordered = sorted(subject_ids, key=attrgetter("int"))  # the index's order: pages read once
    for start in range(0, len(ordered), _CONFIRM_PER_STATEMENT):
        ids = json.dumps([subject.hex for subject in ordered[start : start + _CONFIRM_PER_STATEMENT]])
        connection.execute(statement, {"now": now, "processor": processor, "purpose": purpose, "ids": ids})


# Subjects per confirming UPDATE: few statements per wave, each a short hold on the rows.
_CONFIRM_PER_STATEMENT = 5000


@cache
def _confirm(dialect: str) -> TextClause:
    """The confirming UPDATE for subject ids given as a JSON array of hex strings (:ids)."""
    ids = (
        "SELECT value FROM json_each(:ids)"  # SQLite keeps a UUID as its 32 hex digits
        if dialect == "sqlite"
        else "SELECT CAST(value AS uuid) FROM json_array_elements_text(CAST(:ids AS json))"
    )
    return text(
        "UPDATE recipient SET confirmed_at = :now, last_sent_at = :now, removed_at = NULL"
        f" WHERE processor = :processor AND purpose = :purpose AND subject_id IN ({ids})"
    ).bindparams(bindparam("now", type_=UTCDateTime()))


def record_may_hold_many(
    session: Session, processor: str, purpose: str, subjects: dict[uuid.UUID, str | None], now: datetime
) -> None:
    """Write ahead: these subjects' data may reach the processor (subject id → external id,
    if known). Commit before the first call that can carry it.

    One INSERT … ON CONFLICT for the batch: a new subject gets a "may hold" row; a live row
    stays as it is (a "holds" stays "holds"); a removed one is live again as "may hold".
    """
    record_may_hold_by_purpose(session, processor, {purpose: subjects}, now)


def record_may_hold_by_purpose(
    session: Session, processor: str, by_purpose: Mapping[str, Mapping[uuid.UUID, str | None]], now: datetime
) -> None:
    """``record_may_hold_many`` for several purposes at once, in one statement."""
    _insert_rows(session, _write_ahead, processor, by_purpose, now, confirmed_at=None)


def _insert_rows(
    session: Session,
    statement: Callable[[str, bool], TextClause],
    processor: str,
    by_purpose: Mapping[str, Mapping[uuid.UUID, str | None]],
    now: datetime,
    confirmed_at: datetime | None,
) -> None:
    """One INSERT … SELECT … ON CONFLICT (`statement`, by dialect) for these rows
    (purpose → subject id → external id).

    The rows go in as one JSON array of [subject id, external id] (and the purpose, when
    there are several), unpacked by the database (``_json_rows``), their new ids made there
    too: bound row by row, Python's binding and type processing cost more than the
    database's own work.

    Whoever works on this processor's data for the purpose (``core.catalogue``: USU on the
    newsletter at CleverReach) gets a "may hold" row too, in the same transaction.
    """
    by_purpose = {purpose: subjects for purpose, subjects in by_purpose.items() if subjects}
    if not by_purpose:
        return
    others: dict[str, dict[str, dict[uuid.UUID, str | None]]] = {}
    for purpose, subjects in by_purpose.items():
        for other in co_recipients(processor, purpose):
            others.setdefault(other, {})[purpose] = dict.fromkeys(subjects)
    for other, theirs in others.items():
        _insert_rows(session, _write_ahead, other, theirs, now, confirmed_at=None)
    # In subject order: both indexes the statement touches are keyed by subject, and sorted
    # inserts reuse the pages they just read instead of fetching one per row.
    if len(by_purpose) == 1:
        [(purpose, subjects)] = by_purpose.items()
        rows: list[list[str | None]] = [
            [subject.hex, subjects[subject]] for subject in sorted(subjects, key=attrgetter("int"))
        ]
    else:
        purpose = ""  # one per row
        keyed = sorted(
            (subject.int, p, subject.hex, ext) for p, them in by_purpose.items() for subject, ext in them.items()
        )
        rows = [[hex_, ext, p] for _, p, hex_, ext in keyed]
    head, start = _ascending_ids()
    session.connection().execute(
        statement(session.get_bind().dialect.name, len(by_purpose) > 1),
        {
            "rows": json.dumps(rows),
            "head": head,
            "start": start,
            "processor": processor,
            "purpose": purpose,
            "now": now,
            "confirmed_at": confirmed_at,
        },
    )


def record_may_hold_selected(
    session: Session, processor: str, purpose: str, subjects: str, params: Mapping[str, object], now: datetime
) -> int:
    """``record_may_hold_many`` for the subjects a query selects (`subjects`: SQL of one
    ``subject_id`` column, with its `params`), inside the database: no subject is read into
    Python. The co-recipients get their rows too, in the same statement. Returns how many
    rows it wrote for `processor` (new or made live; a live one counts, unchanged).

    A bulk job's next batch is tens of thousands of subjects: reading their ids, building
    the JSON of ``_insert_rows`` and sorting it cost several times the insert itself. One
    statement for every receiver (CleverReach and USU) runs the subjects' query once and
    finds their pages read already: 15 -> 13 ms for an incremental sync's 500 subjects.
    """
    receivers = _with_co_recipients(processor, purpose)
    head, start = _ascending_ids()
    result = session.connection().execute(
        _write_ahead_selected(session.get_bind().dialect.name, subjects, len(receivers)),
        {
            **params,
            **{f"processor{rank}": name for rank, name in enumerate(receivers)},
            "head": head,
            "start": start,
            "purpose": purpose,
            "now": now,
        },
    )
    # The upsert touches one row per subject and receiver, inserted or updated alike.
    return int(result.rowcount) // len(receivers)


def _with_co_recipients(processor: str, purpose: str) -> list[str]:
    """`processor` and whoever receives with it for `purpose` (``core.catalogue``), theirs
    first, in the order rows were written when each had a statement of its own (every
    writer takes the register's rows in one order: on PostgreSQL, two taking them in
    opposite orders could deadlock)."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for other in co_recipients(name, purpose):
            visit(other)
        if name not in ordered:
            ordered.append(name)

    visit(processor)
    return ordered


@cache
def _write_ahead_selected(dialect: str, subjects: str, receivers: int) -> TextClause:
    """``_write_ahead``'s statement with the rows from the query `subjects`, one per subject
    and receiver (:processor0 …, by rank), taken receiver by receiver in subject order (the
    unique key's: pages read once), the ids numbered by row."""
    order = "p.rank, s.subject_id"
    if dialect == "sqlite":
        new_id = f":head || printf('%015x', :start + row_number() OVER (ORDER BY {order}))"
        name = "{}"
    else:
        new_id = f"CAST(:head || lpad(to_hex(:start + row_number() OVER (ORDER BY {order})), 15, '0') AS uuid)"
        name = "CAST({} AS text)"
    now = ":now" if dialect == "sqlite" else "CAST(:now AS timestamptz)"
    ranks = " UNION ALL ".join(
        f"SELECT {name.format(f':processor{rank}')} AS processor, {rank} AS rank" for rank in range(receivers)
    )
    return text(
        f"INSERT INTO recipient ({_COLUMNS}) SELECT {new_id}, s.subject_id, NULL, p.processor, :purpose,"
        f" {now}, {now}, NULL FROM ({subjects}) AS s CROSS JOIN ({ranks}) AS p WHERE true"
        f" ORDER BY {order}{_LIVE_AGAIN}"
    ).bindparams(bindparam("now", type_=UTCDateTime()))


def _ascending_ids() -> tuple[str, int]:
    """Fresh ascending ids in UUIDv7 layout (RFC 9562), as the insert makes them: Unix
    milliseconds, version and 12 random bits (`head`, 16 hex digits), then the variant and a
    random `start` counted up by the row's place (15 hex digits). New register rows then
    extend the primary-key index at its end instead of dirtying a random page of it per row.
    """
    millis = time.time_ns() // 1_000_000
    head = f"{millis & (2**48 - 1):012x}7{secrets.randbits(12):03x}8"  # "8": variant 10, counter's top bits 00
    return head, secrets.randbits(59)


_COLUMNS = "id, subject_id, external_id, processor, purpose, first_sent_at, last_sent_at, confirmed_at"


def _json_rows(dialect: str, purpose_per_row: bool) -> str:
    """The SELECT of ``_insert_rows``' rows from its JSON array (:rows), per dialect; the
    purpose is :purpose, or each row's third element."""
    if dialect == "sqlite":  # a UUID is its 32 hex digits; "WHERE true" parts SELECT from ON CONFLICT
        purpose = "json_extract(j.value, '$[2]')" if purpose_per_row else ":purpose"
        return (
            "SELECT :head || printf('%015x', :start + j.key), json_extract(j.value, '$[0]'),"
            f" json_extract(j.value, '$[1]'), :processor, {purpose}, :now, :now, :confirmed_at"
            " FROM json_each(:rows) AS j WHERE true"
        )
    purpose = "j.v ->> 2" if purpose_per_row else ":purpose"
    return (
        "SELECT CAST(:head || lpad(to_hex(:start + j.n), 15, '0') AS uuid), CAST(j.v ->> 0 AS uuid),"
        f" j.v ->> 1, :processor, {purpose}, CAST(:now AS timestamptz), CAST(:now AS timestamptz),"
        " CAST(:confirmed_at AS timestamptz) FROM json_array_elements(CAST(:rows AS json)) WITH ORDINALITY AS j(v, n)"
    )


def _typed(sql: str) -> TextClause:
    return text(sql).bindparams(bindparam("now", type_=UTCDateTime()), bindparam("confirmed_at", type_=UTCDateTime()))


@cache
def _upsert(dialect: str, purpose_per_row: bool) -> TextClause:
    """INSERT … ON CONFLICT (subject, processor, purpose) DO UPDATE: the row holds now."""
    return _typed(
        f"INSERT INTO recipient ({_COLUMNS}) {_json_rows(dialect, purpose_per_row)}"
        " ON CONFLICT (subject_id, processor, purpose) DO UPDATE SET"
        " external_id = coalesce(excluded.external_id, recipient.external_id),"
        " last_sent_at = excluded.last_sent_at, confirmed_at = excluded.confirmed_at, removed_at = NULL"
    )


# A write-ahead's conflict: a live row stays as it is (a "holds" stays "holds"), a removed
# one is live again as "may hold".
_LIVE_AGAIN = (
    " ON CONFLICT (subject_id, processor, purpose) DO UPDATE SET"
    " external_id = coalesce(recipient.external_id, excluded.external_id),"
    " confirmed_at = CASE WHEN recipient.removed_at IS NULL THEN recipient.confirmed_at END,"
    " removed_at = NULL"
)


@cache
def _write_ahead(dialect: str, purpose_per_row: bool) -> TextClause:
    """INSERT … ON CONFLICT DO UPDATE that makes a row live without un-confirming it."""
    return _typed(f"INSERT INTO recipient ({_COLUMNS}) {_json_rows(dialect, purpose_per_row)}{_LIVE_AGAIN}")


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
