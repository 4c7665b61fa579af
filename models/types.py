"""Column types shared by every table."""

from __future__ import annotations

import hmac
import os
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Column, DateTime, Integer, Table, extract
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

# The calendar lives in core.clock (connectors read it too); named here as well, since every
# table module already imports its column types from here.
from core.clock import BERLIN, GRID_MINUTES, berlin_text, berlin_today, berlin_wall_clock, utcnow

T = TypeVar("T", bound=SQLModel)

__all__ = [
    "BERLIN",
    "GRID_MINUTES",
    "NOT_PERSONAL",
    "PERSONAL",
    "PII_CLASSES",
    "PSEUDONYMOUS",
    "UTCDateTime",
    "berlin_text",
    "berlin_today",
    "berlin_wall_clock",
    "classify",
    "content_key",
    "event_key",
    "new_id",
    "personal_columns",
    "pii_class",
    "unix_seconds",
    "utcnow",
]


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python, on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no zone, so values are stored as naive UTC
    and made aware again on the way out. A naive value on the way in is a bug, not a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store timezone-aware values only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect):
        # On SQLite, the composite TypeDecorator makes (process_bind_param, then the DATETIME
        # type's %-formatting: three Python calls a value) done in one, as intake writes
        # times by the hundred thousand. The text is SQLite's DATETIME storage format
        # exactly (``YYYY-MM-DD HH:MM:SS.ffffff``, naive UTC), so stored values and bounds
        # compared with them are the same as before.
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime: store timezone-aware values only")
            return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]

        return process

    def process_result_value(self, value: datetime | None, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class unix_seconds(FunctionElement):  # an SQL function, named like one (as SQLAlchemy names its own)
    """The whole Unix seconds of a ``UTCDateTime`` column, truncated: what
    ``int(value.timestamp())`` gives for the value in Python (as CleverReach's
    ``registered`` and ``activated`` take a time).

    SQLite's date functions round a time to the millisecond before anything else, so
    ``strftime('%s', '... 23:03:32.9996')`` gives the next second; there the stored text loses
    its fraction first. PostgreSQL's ``EXTRACT(epoch ...)`` keeps the fraction, which the
    caller truncates with ``int()``.
    """

    type = Integer()
    inherit_cache = True


@compiles(unix_seconds)
def _unix_seconds(element, compiler, **kw):
    (column,) = element.clauses.clauses
    return compiler.process(extract("epoch", column), **kw)


@compiles(unix_seconds, "sqlite")
def _unix_seconds_sqlite(element, compiler, **kw):
    (column,) = element.clauses.clauses
    # The storage format (``UTCDateTime.bind_processor``) up to the whole seconds.
    return f"CAST(strftime('%s', substr({compiler.process(column, **kw)}, 1, 19)) AS INTEGER)"


def event_key(key: bytes, *parts: object) -> str:
    """The keyed dedupe key of an event: the same parts give the same key, so storing an
    event twice is recognised (ConsentEvent.dedupe_key, IntakeReceipt.dedupe_key are unique).

    >>> event_key(b"k", "expire", 1) == event_key(b"k", "expire", 1)
    True
    """
    payload = "|".join(map(str, parts)).encode()
    # hmac.digest: the one-shot C path, the same value as hmac.new(...).hexdigest().
    return hmac.digest(key, payload, "sha256").hex()


def content_key(key: bytes, content: bytes) -> str:
    """``event_key(key, text)`` of a text given as its UTF-8 bytes (a serialiser's output),
    without decoding it only to encode it again.

    >>> content_key(b"k", "ä|1".encode()) == event_key(b"k", "ä|1")
    True
    """
    return hmac.digest(key, content, "sha256").hex()


def new_id() -> uuid.UUID:
    """A new row id: a time-ordered UUID (version 7, RFC 9562), so ids made one after the
    other sort one after the other.

    Why not random ids (version 4): an id's index then takes each new row at a random page,
    and a chunk of 5,000 intake lines dirtied pages all over four indexes (consent,
    data_subject and their references), written to the WAL at every commit: time-ordered,
    they go to the right edge of each index (the intake's inserts took a quarter less).
    The id carries when it was made, to the millisecond, and 62 random bits; it names a
    record, never a person.

    >>> a, b = new_id(), new_id()
    >>> a.version, a < b
    (7, True)
    """
    global _last_stamp
    ns = time.time_ns()
    # 48 bits of milliseconds, then 12 bits of the millisecond's fraction (RFC 9562 method
    # 3), kept increasing from one call to the next (two threads at the same instant may
    # share a stamp: the random bits keep their ids apart).
    stamp = ((ns // 1_000_000) << 12) | ((ns % 1_000_000) * 4096 // 1_000_000)
    if stamp <= _last_stamp:
        stamp = _last_stamp + 1
    _last_stamp = stamp
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    return uuid.UUID(int=(stamp >> 12) << 80 | 0x7 << 76 | (stamp & 0xFFF) << 64 | 0b10 << 62 | rand)


_last_stamp = 0  # new_id's last stamp


# Per table: its plain defaults, and its default factories (none takes an argument).
_ROW_DEFAULTS: dict[type, tuple[dict[str, Any], dict[str, Callable[[], Any]]]] = {}


def new_row(table: type[T], **values: Any) -> T:
    """A new (transient) row object of a SQLModel `table`, as ``table(**values)`` makes it:
    every field set, to its value or its default, none validated (a table model's __init__
    validates nothing either).

    For intake's hot path: SQLModel's __init__ sets each field through pydantic and
    SQLAlchemy's attribute events and inspects each default factory's signature on every
    call, ten times what this costs. The values go straight into the instance state
    SQLAlchemy makes for a new object (``ClassManager.new_instance``), which is what its
    unit of work reads on INSERT; later changes go through the usual attribute events.
    """
    known = _ROW_DEFAULTS.get(table)
    if known is None:
        plain = {
            n: f.default for n, f in table.model_fields.items() if f.default_factory is None and not f.is_required()
        }
        factories: dict[str, Callable[[], Any]] = {
            n: f.default_factory  # type: ignore[misc]  # our tables' factories take no argument
            for n, f in table.model_fields.items()
            if f.default_factory is not None
        }
        known = _ROW_DEFAULTS[table] = (plain, factories)
    plain, factories = known
    row = table._sa_class_manager.new_instance()  # type: ignore[attr-defined]  # SQLAlchemy sets it on mapped classes
    state = row.__dict__
    state.update(plain)
    for name, factory in factories.items():
        if name not in values:
            state[name] = factory()
    state.update(values)
    return row


# What a column can hold, declared once per column of every table (``classify``): erasure
# clears the personal ones and ``personal_data_left`` reads them back; a test fails for a
# column without a class.
PERSONAL = "personal"  # names, describes or reaches the person: names, contact data, IBAN, IPs, documents
PSEUDONYMOUS = "pseudonymous"  # points at a person without naming them: our ids, pseudonyms, processors' ids
NOT_PERSONAL = "not_personal"  # states, times, counts, checked free texts
PII_CLASSES = (PERSONAL, PSEUDONYMOUS, NOT_PERSONAL)


def classify(
    model: type,
    *,
    personal: Iterable[str] = (),
    pseudonymous: Iterable[str] = (),
    not_personal: Iterable[str] = (),
) -> None:
    """Declare the class of each named column of `model`'s table (``column.info["pii"]``).

    Called right below the model. A name that is no column, or named twice, is a
    ValueError at import; a column left out has no class (tests/models/test_pii_classes.py
    fails for it).

    Example::

        classify(DataSubject, personal=["email", "first_name"], pseudonymous=["id", "pseudonym"],
                 not_personal=["created_at"])
    """
    table: Table = model.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    seen: set[str] = set()
    for kind, names in ((PERSONAL, personal), (PSEUDONYMOUS, pseudonymous), (NOT_PERSONAL, not_personal)):
        for name in names:
            if name not in table.c:
                raise ValueError(f"{table.name} has no column {name}")
            if name in seen:
                raise ValueError(f"{table.name}.{name} is classified twice")
            seen.add(name)
            table.c[name].info["pii"] = kind


def pii_class(column: Column) -> str | None:
    """The column's declared class (``PII_CLASSES``), None when undeclared."""
    return column.info.get("pii")


def personal_columns(table: Table) -> list[Column]:
    """The table's columns declared personal."""
    return [c for c in table.columns if pii_class(c) == PERSONAL]
