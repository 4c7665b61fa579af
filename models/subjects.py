"""Data subjects: one row per person across all jobs."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlmodel import Field, SQLModel

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
