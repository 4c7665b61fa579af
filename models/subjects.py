"""Data subjects: one row per person across all jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy import select as sa_select
from sqlmodel import Field, Session, SQLModel, col, select

from models.db import PlainRow, write_plain_rows
from models.identity import pseudonym
from models.types import UTCDateTime, classify, new_id, personal_columns, utcnow


class DataSubject(SQLModel, table=True):
    __tablename__ = "data_subject"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    # HMAC of the identifier the subject was first seen with; survives erasure of the rest.
    pseudonym: str = Field(index=True, unique=True, max_length=32)
    email: str | None = Field(default=None, unique=True, max_length=320)
    insurance_number: str | None = Field(default=None, unique=True, max_length=10)
    salutation: str | None = Field(default=None, max_length=40)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    erased_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    def erase_personal_data(self, now: datetime) -> None:
        """Drop everything that names the person (every column classified personal); the
        pseudonym stays for the audit trail."""
        for column in personal_columns(DataSubject.__table__):  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
            setattr(self, column.key, None)
        self.erased_at = now


classify(
    DataSubject,
    personal=["email", "insurance_number", "salutation", "first_name", "last_name"],
    pseudonymous=["id", "pseudonym"],
    not_personal=["created_at", "erased_at"],
)


class AddressAlias(SQLModel, table=True):
    """An address a subject had until a rectification (Art. 16) corrected it, or until it was
    erased: the pseudonym of that address, and until when it was theirs.

    A line dated by then under that address, arriving later (a withdrawal the website sent
    late, an erasure request received before the correction), is the person's, whoever has
    the address now: by event time it may be their latest decision, and after an erasure it
    restores nothing. One dated later is someone else's. Only pseudonymous, so an erasure
    keeps it, as it keeps the subject's pseudonym."""

    __tablename__ = "address_alias"

    pseudonym: str = Field(primary_key=True, max_length=32)
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id", primary_key=True)
    # In the key: an address corrected away, back, and away again is two spans of one person.
    until: datetime = Field(sa_type=UTCDateTime, primary_key=True)


classify(AddressAlias, pseudonymous=["pseudonym", "subject_id"], not_personal=["until"])

Spans = list[tuple[datetime, uuid.UUID]]  # (until, subject) of one address, earliest first


def holder_at(spans: Spans, at: datetime) -> uuid.UUID | None:
    """Whose the address was at `at`, of its `spans` (``AddressAlias`` rows, earliest first):
    the first span that ends at or after `at`; None when it was no span's then.

    >>> from datetime import UTC, timedelta
    >>> t = datetime(2026, 12, 1, tzinfo=UTC)
    >>> holder_at([(t, uuid.UUID(int=1))], t - timedelta(days=1))
    UUID('00000000-0000-0000-0000-000000000001')
    >>> holder_at([(t, uuid.UUID(int=1))], t + timedelta(days=1)) is None
    True
    """
    return next((subject_id for until, subject_id in spans if at <= until), None)


def alias_of(session: Session, address_pseudonym: str, at: datetime) -> uuid.UUID | None:
    """The subject whose address (by its pseudonym) it was at `at`, corrected or erased
    since; None when it was nobody's such address then (``holder_at``)."""
    query = (
        select(AddressAlias.until, AddressAlias.subject_id)
        .where(AddressAlias.pseudonym == address_pseudonym)
        .order_by(col(AddressAlias.until))
    )
    return holder_at(list(session.exec(query).all()), at)


def keep_alias(session: Session, address_pseudonym: str, subject_id: uuid.UUID, until: datetime) -> None:
    """Record that the address (by its pseudonym) was the subject's until `until`."""
    session.merge(AddressAlias(pseudonym=address_pseudonym, subject_id=subject_id, until=until))


def erase_subject(session: Session, subject: DataSubject, key: bytes, now: datetime) -> None:
    """Drop what names the subject (``DataSubject.erase_personal_data``), keeping the span of
    the address it goes by when a correction gave it: that address's pseudonym is not the
    subject's, and the person's line dated before the erasure, arriving later under it, must
    find them (and restore nothing) instead of making someone new of old data."""
    if subject.email is not None:
        address = pseudonym(key, "email", subject.email)
        if address != subject.pseudonym:
            keep_alias(session, address, subject.id, now)
    subject.erase_personal_data(now)


# Intake reads and writes subjects by the thousand: as plain rows with Core (``Subject``,
# ``load_subjects``, ``write_subjects``), without an ORM object each, whose attribute events,
# unit of work and identity map cost more than the rest of a sign-up.
_TABLE = DataSubject.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
SUBJECT_COLUMNS: tuple[str, ...] = tuple(c.key for c in _TABLE.columns)
_CHANGING = tuple(c for c in SUBJECT_COLUMNS if c not in ("id", "pseudonym", "created_at"))


class Subject(PlainRow):
    """A data subject as intake reads and writes it: the ``data_subject`` columns as plain
    attributes, and whether it is in the database yet (``stored``)."""

    __slots__ = SUBJECT_COLUMNS
    # The columns, for the type checker (a column added to the table is in the slots too).
    id: uuid.UUID
    pseudonym: str
    email: str | None
    insurance_number: str | None
    salutation: str | None
    first_name: str | None
    last_name: str | None
    created_at: datetime
    erased_at: datetime | None

    @classmethod
    def new(cls, pseudonym: str, now: datetime | None = None) -> Subject:
        """A subject not in the database yet, holding only its pseudonym; created `now`
        (default: the clock)."""
        values: dict[str, Any] = dict.fromkeys(SUBJECT_COLUMNS)
        values.update(id=new_id(), pseudonym=pseudonym, created_at=now or utcnow())
        return cls(False, values.items())


def load_subjects(session: Session, where: ColumnElement[bool], params: dict[str, Any] | None = None) -> list[Subject]:
    """The subjects `where` selects (a condition on ``DataSubject``'s columns, with the
    values of its bound parameters in `params`)."""
    rows = session.connection().execute(sa_select(*_TABLE.columns).where(where), params)
    return [Subject(True, zip(SUBJECT_COLUMNS, row, strict=True)) for row in rows]


def write_subjects(session: Session, subjects: Iterable[Subject]) -> None:
    """Insert the new ones of `subjects`, update the stored ones (every column that can
    change); each with one statement for all."""
    write_plain_rows(session, subjects, _TABLE, SUBJECT_COLUMNS, _CHANGING)
