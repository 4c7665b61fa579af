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


class PendingLine(SQLModel, table=True):
    """A reschedule or cancellation naming a booking or order not known yet, from an earlier
    file or request than the record itself: kept, and applied when the record arrives
    (``intake.receipts.ReceiptStore``), so the order files and requests arrive in changes
    nothing. It holds no personal data: the reference, times and the appointment's slot."""

    __tablename__ = "intake_pending"

    dedupe_key: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=40)
    ref: str = Field(max_length=60, index=True)  # the booking_id or order_id it names
    at: datetime = Field(sa_type=UTCDateTime)
    line: str  # the event as JSON, validated when it arrived
    received_at: datetime = Field(sa_type=UTCDateTime)


classify(PendingLine, pseudonymous=["dedupe_key", "ref", "line"], not_personal=["kind", "at", "received_at"])


def seen(session: Session, keys: Iterable[str]) -> set[str]:
    """Those of `keys` that have a receipt."""
    keys = list(keys)
    if not keys:
        return set()
    query = select(IntakeReceipt.dedupe_key).where(col(IntakeReceipt.dedupe_key).in_(keys))
    return set(session.exec(query))
