"""What a person consented to: the consent text and the confirmation mail, by policy version.

A sign-up line names the ``policy_version`` of the text the website showed; the proof of
consent (``psync consent proof``) prints that text and the double-opt-in mail the person
confirmed from. So each version's two texts are registered here once, with their SHA-256
and the date they took effect, and never change afterwards: registering a version again
with the same texts is a no-op, with other texts it is refused (a changed text is a new
version). Intake refuses a sign-up whose version is not registered (``known_versions``).

The texts shipped with psync live in ``models/consent_texts/<version>/`` (``consent.txt``,
``mail.txt``) and ``models/consent_texts/versions.toml`` (the date each took effect);
``psync db upgrade`` registers those not registered yet (``register_shipped``). The
website's own texts are registered with ``psync consent texts add``.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import Text
from sqlmodel import Field, Session, SQLModel, col, select

from models.db import INSERT_BY_DIALECT
from models.types import UTCDateTime, classify, utcnow

SHIPPED = Path(__file__).parent / "consent_texts"
# What a version looks like: the website's label, e.g. 2026-01 or v3.2 (no spaces, no
# markup; it is printed in the proof and named in file names).
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_TEXT = 200_000  # characters of one text: a privacy notice is long, not that long


class ConsentText(SQLModel, table=True):
    """The two texts of one policy version, as shown and sent; immutable once registered."""

    __tablename__ = "consent_text"

    version: str = Field(primary_key=True, max_length=100)
    # The consent text shown next to the sign-up form's checkbox.
    consent_text: str = Field(sa_type=Text)
    consent_sha256: str = Field(max_length=64)
    # The double-opt-in mail with the confirmation link (the link itself is per person).
    mail_text: str = Field(sa_type=Text)
    mail_sha256: str = Field(max_length=64)
    effective_from: date
    registered_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# The controller's own texts, the same for everyone: nothing about a person.
classify(
    ConsentText,
    not_personal=[
        "version",
        "consent_text",
        "consent_sha256",
        "mail_text",
        "mail_sha256",
        "effective_from",
        "registered_at",
    ],
)


class TextConflict(ValueError):
    """The version is registered with other texts (or another date); nothing was changed."""


def sha256(text: str) -> str:
    """The SHA-256 of a text's UTF-8 bytes, hex.

    >>> sha256("abc")[:16]
    'ba7816bf8f01cfea'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_version(version: str) -> str:
    """`version` stripped, or ValueError when it is not a version label."""
    version = version.strip()
    if not VERSION.fullmatch(version):
        raise ValueError("version: 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return version


def _check_text(text: str, what: str) -> str:
    # Line endings as the website's files may have them; the hash is over what is stored.
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise ValueError(f"{what}: empty")
    if len(text) > MAX_TEXT:
        raise ValueError(f"{what}: longer than {MAX_TEXT} characters")
    if "\x00" in text:
        raise ValueError(f"{what}: contains a NUL character")
    return text


@dataclass(frozen=True)
class Registered:
    """What ``register`` did: the version's row, and whether this call created it."""

    text: ConsentText
    created: bool


def register(
    session: Session,
    version: str,
    consent_text: str,
    mail_text: str,
    effective_from: date,
    now: datetime | None = None,
) -> Registered:
    """Register a version's texts; the same texts again change nothing.

    Raises ValueError for a malformed version or text, TextConflict when the version holds
    other texts or another date. Of two registrations of a version at once, the second
    waits for the first and is then compared with it (INSERT … ON CONFLICT DO NOTHING).
    Does not commit.
    """
    version = check_version(version)
    consent_text = _check_text(consent_text, "consent text")
    mail_text = _check_text(mail_text, "mail text")
    values = {
        "version": version,
        "consent_text": consent_text,
        "consent_sha256": sha256(consent_text),
        "mail_text": mail_text,
        "mail_sha256": sha256(mail_text),
        "effective_from": effective_from,
        "registered_at": now or utcnow(),
    }
    insert = INSERT_BY_DIALECT[session.get_bind().dialect.name]
    table = ConsentText.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    # RETURNING says whether this statement inserted (a rowcount is not reliable on every driver).
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(table.c.version)
    created = session.connection().execute(statement).first() is not None
    row = session.get(ConsentText, version, populate_existing=True)
    assert row is not None
    if created:
        return Registered(row, True)
    differs = [
        what
        for what, same in (
            ("consent text", row.consent_sha256 == values["consent_sha256"]),
            ("mail text", row.mail_sha256 == values["mail_sha256"]),
            ("effective date", row.effective_from == effective_from),
        )
        if not same
    ]
    if differs:
        raise TextConflict(
            f"version {version} is registered with another {' and '.join(differs)}; "
            "a registered text never changes: register the new text under a new version"
        )
    return Registered(row, False)


def known_versions(session: Session, versions: Iterable[str]) -> set[str]:
    """Which of `versions` are registered: one query, whatever their number."""
    wanted = {v for v in versions if v}
    if not wanted:
        return set()
    query = select(ConsentText.version).where(col(ConsentText.version).in_(sorted(wanted)))
    return set(session.exec(query))


def texts_of(session: Session, versions: Iterable[str]) -> dict[str, ConsentText]:
    """The registered texts of these versions, by version (an unknown one is left out)."""
    wanted = sorted({v for v in versions if v})
    if not wanted:
        return {}
    rows = session.exec(select(ConsentText).where(col(ConsentText.version).in_(wanted)))
    return {row.version: row for row in rows}


def all_texts(session: Session) -> list[ConsentText]:
    """Every registered version, oldest effective date first."""
    query = select(ConsentText).order_by(col(ConsentText.effective_from), col(ConsentText.version))
    return list(session.exec(query))


@dataclass(frozen=True)
class Shipped:
    """One version's texts as shipped in ``models/consent_texts``."""

    version: str
    consent_text: str
    mail_text: str
    effective_from: date


def shipped(folder: Path = SHIPPED) -> list[Shipped]:
    """The versions shipped with psync: ``versions.toml`` names each and its date, its
    folder holds ``consent.txt`` and ``mail.txt``."""
    index = tomllib.loads((folder / "versions.toml").read_text(encoding="utf-8"))
    found = []
    for version, entry in index.items():
        effective = entry["effective_from"]
        if not isinstance(effective, date):
            raise ValueError(f"{folder / 'versions.toml'}: {version}.effective_from is not a date")
        found.append(
            Shipped(
                check_version(version),
                (folder / version / "consent.txt").read_text(encoding="utf-8"),
                (folder / version / "mail.txt").read_text(encoding="utf-8"),
                effective,
            )
        )
    return found


def register_shipped(session: Session, folder: Path = SHIPPED) -> list[str]:
    """Register every shipped version not registered yet; returns those registered now.

    A shipped version registered with other texts raises TextConflict: the files were
    changed after they were registered, and a consent text never changes.
    """
    return [s.version for s in shipped(folder) if register(session, *_fields(s)).created]


def _fields(s: Shipped) -> tuple[str, str, str, date]:
    return s.version, s.consent_text, s.mail_text, s.effective_from
