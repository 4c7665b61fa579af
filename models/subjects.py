"""Data subjects: one row per person across all jobs."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlmodel import Field, Session, SQLModel, select

from models.identity import pseudonym
from models.types import UTCDateTime, new_id, utcnow


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
        """Drop everything that names the person; the pseudonym stays for the audit trail."""
        self.email = self.insurance_number = None
        self.salutation = self.first_name = self.last_name = None
        self.erased_at = now


def find_or_create_subject(
    session: Session,
    key: bytes,
    email: str | None,
    insurance_number: str | None = None,
) -> DataSubject:
    """The subject with this normalised e-mail or insurance number, created when new.

    Matching on either identifier keeps one row per person across jobs; an identifier the
    row lacks is filled in. Identifiers must already be normalised.
    """
    subject = None
    if email:
        subject = session.exec(select(DataSubject).where(DataSubject.email == email)).first()
    if subject is None and insurance_number:
        subject = session.exec(
            select(DataSubject).where(DataSubject.insurance_number == insurance_number)
        ).first()
    if subject is None:
        kind, value = ("email", email) if email else ("kvnr", insurance_number)
        if value is None:
            raise ValueError("a data subject needs an e-mail address or an insurance number")
        subject = DataSubject(pseudonym=pseudonym(key, kind, value))
        session.add(subject)
    if email and subject.email is None:
        subject.email = email
    if insurance_number and subject.insurance_number is None:
        subject.insurance_number = insurance_number
    return subject
