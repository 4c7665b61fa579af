"""Receipts of intake lines already applied, for event types without an event table
(the table; ``intake.receipts`` applies lines against it).

Consent events carry their own dedupe key (``ConsentEvent.dedupe_key``); booking and later
event types leave a receipt here, so feeding the same file twice changes nothing the second
time (a re-sent reschedule is not applied again after a later one).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlmodel import Field, Session, SQLModel, col, select

from models.types import UTCDateTime, classify


class IntakeReceipt(SQLModel, table=True):
    __tablename__ = "intake_receipt"

    # Keyed HMAC of the line's content (``models.types.event_key``): nothing personal.
    dedupe_key: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=40)
    received_at: datetime = Field(sa_type=UTCDateTime)


classify(IntakeReceipt, pseudonymous=["dedupe_key"], not_personal=["kind", "received_at"])


def seen(session: Session, keys: Iterable[str]) -> set[str]:
    """Those of `keys` that have a receipt."""
    keys = list(keys)
    if not keys:
        return set()
    query = select(IntakeReceipt.dedupe_key).where(col(IntakeReceipt.dedupe_key).in_(keys))
    return set(session.exec(query))
