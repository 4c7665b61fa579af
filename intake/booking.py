"""Intake of booking events (seed 001): request, reschedule, cancel.

A booking is identified by the website's booking id. Storing is idempotent by content: the
same request twice is a duplicate, a reschedule to the time already booked is unchanged.

Checks that need the intake's clock or configuration (a start in the past, an unknown service
point) read them from the validation context: ``{"now": datetime, "service_points": set}``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from intake.receipts import ReceiptStore, erased_reason, ignored
from intake.types import (
    Applied,
    Email,
    EventBase,
    InsuranceNumber,
    NotYetKnown,
    Phone,
    PlausibleTime,
    context_now,
    lenient,
)
from models.audit import AuditEvent
from models.bookings import BERLIN, Booking, BookingStatus, Channel
from models.consent import describe_time
from models.subject_index import erased_before
from models.types import GRID_MINUTES, berlin_wall_clock

BookingId = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,49}$", description="the website's booking id")
MAX_AGE_YEARS = 130


class BookingRejected(ValueError):
    """The event does not fit the booking's state; the reason is safe to show."""


def check_start(start: datetime, info: ValidationInfo) -> datetime:
    """A Berlin wall-clock time as written (Berlin's offset, so neither in the skipped hour
    nor meant elsewhere), deliverable to TIMIFY (the push's own check: the 5-minute grid,
    not the repeated autumn hour), and ahead."""
    berlin_wall_clock(start, as_written=True)
    now = context_now(info)
    if now is not None and start <= now and not lenient(info):
        raise ValueError("lies in the past")
    return start


def check_service_point(value: str | None, info: ValidationInfo) -> str | None:
    known = (info.context or {}).get("service_points")
    if value is not None and known is not None and value not in known:
        raise ValueError("unknown service point")
    return value


class BookingRequest(EventBase):
    """A consultation booked on the website, at a service point or by video."""

    multiline: ClassVar[frozenset[str]] = frozenset({"concern"})

    type: Literal["booking.request"]
    booking_id: str = BookingId
    channel: Channel
    service_point: str | None = Field(default=None, max_length=60, description="for branch bookings")
    start: PlausibleTime = Field(
        description="ISO 8601 with Berlin's offset for that date, on the 5-minute grid; "
        "not in the hour that happens twice when the clocks go back"
    )
    duration_minutes: int = Field(ge=5, le=480, multiple_of=GRID_MINUTES)
    salutation: Literal["Frau", "Herr", "divers"]
    first_name: str = Field(min_length=1, max_length=200)
    last_name: str = Field(min_length=1, max_length=200)
    phone: Phone
    email: Email
    insurance_number: InsuranceNumber | None = None
    birth_date: date | None = None
    concern: str | None = Field(default=None, max_length=1000, description="optional")

    _start = field_validator("start")(check_start)
    _service_point = field_validator("service_point")(check_service_point)

    @field_validator("birth_date")
    @classmethod
    def _plausible_birth_date(cls, value: date | None, info: ValidationInfo) -> date | None:
        if value is None or lenient(info):
            return value
        today = (context_now(info) or datetime.now(BERLIN)).astimezone(BERLIN).date()
        if not today - timedelta(days=365 * MAX_AGE_YEARS) < value < today:
            raise ValueError("is not a plausible birth date")
        return value

    @model_validator(mode="after")
    def _identification(self) -> BookingRequest:
        # Seed 001 asks for the insurance number OR the birth date: one is needed, not both.
        if not self.insurance_number and self.birth_date is None:
            raise ValueError("give insurance_number or birth_date")
        if (self.channel == Channel.branch) != (self.service_point is not None):
            raise ValueError("service_point is needed for branch bookings and only for them")
        return self


class BookingReschedule(EventBase):
    """The customer moved the appointment (and, for a branch, maybe the service point)."""

    type: Literal["booking.reschedule"]
    booking_id: str = BookingId
    start: PlausibleTime
    duration_minutes: int | None = Field(default=None, ge=5, le=480, multiple_of=GRID_MINUTES)
    service_point: str | None = Field(default=None, max_length=60)

    _start = field_validator("start")(check_start)
    _service_point = field_validator("service_point")(check_service_point)


class BookingCancel(EventBase):
    """The customer or the controller cancelled the appointment."""

    type: Literal["booking.cancel"]
    booking_id: str = BookingId


BookingIntakeEvent = BookingRequest | BookingReschedule | BookingCancel
_CUSTOMER_FIELDS = ("salutation", "first_name", "last_name", "phone", "birth_date", "insurance_number", "concern")


class UnknownBooking(BookingRejected, NotYetKnown):
    """A reschedule or cancellation of a booking not known (yet)."""


class BookingStore(ReceiptStore):
    """Applies booking events of one chunk; the chunk's bookings are fetched up front.

    By event time: a booking's ``updated_at`` is the time of the request or reschedule that
    set its start. A reschedule older than that is recorded and ignored (one at the same
    instant applies: after its request, or after another reschedule the website sent with
    the very same time). A cancellation is final, whatever its time: a reschedule that
    arrives after it still sets where the booking was to be (as it would have, arriving
    first) but the booking stays cancelled and nothing is sent. So a booking ends the same
    in any arrival order. A booking whose data was erased takes no more changes; a request
    dated at or before its person's erasure restores nothing.
    """

    table, ref_column, counter = Booking, "booking_ref", "booking"
    pending_kinds = frozenset({"booking.reschedule", "booking.cancel"})

    @staticmethod
    def ref_of(event: BookingIntakeEvent) -> str:
        return event.booking_id

    def _apply(self, event: BookingIntakeEvent, booking: Booking | None, seq: int) -> Applied:
        if isinstance(event, BookingRequest):
            if booking is not None:
                raise BookingRejected("booking_id exists already; change it with booking.reschedule")
            subject = self.subjects.find(event.email, event.insurance_number, event.at)
            if erased_before(subject, event.at):
                assert subject is not None and subject.erased_at is not None
                reason = erased_reason(subject.erased_at)
                return ignored(event.type, "erased", reason, subject.pseudonym, f"booking={event.booking_id}")
            booking = self._create(event, seq)
            return Applied("stored", self._audit("booking.requested", booking))
        if booking is None:
            raise UnknownBooking("unknown booking_id")
        if booking.first_name is None:  # a request always carries a name: erased
            return self._ignored(event, booking, "erased", "this booking's data was erased; nothing to change")
        cancelled = booking.status == BookingStatus.cancelled
        if isinstance(event, BookingCancel):
            if cancelled:
                when = booking.cancelled_at or booking.updated_at
                if booking.cancelled_at is not None and event.at < booking.cancelled_at:
                    booking.cancelled_at = event.at  # the earliest counts, whichever came first
                return Applied("unchanged", reason=f"already cancelled (at {describe_time(when)})")
            booking.status, booking.cancelled_at, booking.seq = BookingStatus.cancelled, event.at, seq
            return Applied("stored", self._audit("booking.cancelled", booking))
        if event.service_point is not None and booking.channel != Channel.branch:
            raise BookingRejected("service_point only applies to branch bookings")
        current = (booking.start_at, booking.duration_min, booking.service_point)
        new = (
            event.start,
            event.duration_minutes or booking.duration_min,
            event.service_point or booking.service_point,
        )
        if event.at < booking.updated_at:
            reason = f"older than the current booking (changed at {describe_time(booking.updated_at)})"
            return self._ignored(event, booking, "stale", reason)
        # Nothing moves, but the time counts: a reschedule dated between the two that arrives
        # later is older than this decision.
        booking.updated_at = event.at
        if new == current:
            return Applied("unchanged", reason="the booking is at that time already")
        booking.start_at, booking.duration_min, booking.service_point = new
        if cancelled:
            # Recorded, so the booking ends the same whether this line came before or after
            # its cancellation; the appointment stays cancelled and nothing is sent.
            reason = f"the booking stays cancelled (at {describe_time(booking.cancelled_at or booking.updated_at)})"
            return Applied("stored", self._audit("booking.rescheduled", booking), reason)
        booking.seq = seq
        return Applied("stored", self._audit("booking.rescheduled", booking))

    def _create(self, event: BookingRequest, seq: int) -> Booking:
        # New data the person gave: it brings an erased subject back, with nothing old.
        subject = self.subjects.resolve(event.email, event.insurance_number, event.at)
        booking = Booking(
            booking_ref=event.booking_id,
            subject_id=subject.id,
            channel=event.channel,
            service_point=event.service_point,
            start_at=event.start,
            duration_min=event.duration_minutes,
            seq=seq,
            created_at=event.at,
            updated_at=event.at,
            **{name: getattr(event, name) for name in _CUSTOMER_FIELDS},
        )
        self.session.add(booking)
        self.remember(booking, subject.pseudonym)
        return booking

    def _ignored(self, event: BookingIntakeEvent, booking: Booking, why: str, reason: str) -> Applied:
        pseudonym = self.pseudonyms[booking.subject_id]
        return ignored(event.type, why, reason, pseudonym, f"booking={booking.booking_ref}")

    def _audit(self, action: str, booking: Booking) -> AuditEvent:
        return AuditEvent(
            action,
            "recorded",
            subject=self.pseudonyms[booking.subject_id],
            detail=f"booking={booking.booking_ref} channel={booking.channel}",
        )
