"""Receipts of intake lines already applied, for event types without an event table.

Consent events carry their own dedupe key (``ConsentEvent.dedupe_key``); booking and later
event types leave a receipt here, so feeding the same file twice changes nothing the second
time (a re-sent reschedule is not applied again after a later one).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlmodel import Field, Session, SQLModel, select

from models.types import UTCDateTime


class IntakeReceipt(SQLModel, table=True):
    __tablename__ = "intake_receipt"

    # Keyed HMAC of the line's content (``consent.event_key``): nothing personal.
    dedupe_key: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=40)
    received_at: datetime = Field(sa_type=UTCDateTime)


def seen(session: Session, keys: Iterable[str]) -> set[str]:
    keys = list(keys)
    if not keys:
        return set()
    query = select(IntakeReceipt.dedupe_key).where(IntakeReceipt.dedupe_key.in_(keys))  # type: ignore[attr-defined]
    return set(session.exec(query))
