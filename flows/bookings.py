"""Bookings → TIMIFY, video consultations → Flexperto, chat data gone after 90 days (seed 001).

Two flows, one Prefect task per batch of bookings:

- ``push-bookings``: every booking changed since the cursor goes to TIMIFY: the customer
  (external id: our subject id) and the appointment (external id: the website's booking id),
  created or updated, so a retry or a re-run never makes a second one. A video booking's
  customer is also registered at Flexperto (contact data only). A cancelled booking's
  appointment is deleted at TIMIFY, and its Flexperto data right away. A manual run may name
  booking ids; it then pushes those and leaves the cursor alone.
- ``purge-video-chat-data``: daily; everything Flexperto holds about a video consultation
  (customer record, chat and recording archives) is deleted on the 90th Berlin calendar day
  after it at the latest, verified by reading back, and recorded in the audit trail and the
  recipient register. A deletion that cannot be verified stays due and fails the run.

Each task owns its transaction; the processors' answers (ids) commit with the cursor. A crash
between a call and the commit only means the batch is sent again, and the external ids make
that a no-op at the processor.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import date
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field
from sqlmodel import Session, col, select

from connectors import flexperto, timify
from connectors.transport import CallRecord
from core.clock import berlin_today
from core.settings import Settings, get_settings
from flows.common import (
    NO_RESULTS,
    JobFailed,
    audit_failure,
    call_events,
    counts_artifact,
    decision,
    one_line_failure,
    tally,
    write_audit,
)
from flows.delivery import Reach, StreamJob, fail_if_parked, run_batch, waiting
from models.audit import AuditEvent
from models.bookings import (
    Booking,
    BookingStatus,
    Channel,
    by_refs,
    changed_since,
    chat_purge_due,
    chats_due,
    count_changed_since,
    count_chats_due,
)
from models.cursors import cursor_position
from models.db import transaction
from models.recipients import Recipient, record_removed_for, record_sent_by_purpose, record_sent_many
from models.subjects import DataSubject
from models.types import utcnow

CURSOR = "timify:bookings"
PURPOSE = "booking"
BookingRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,49}$")]


class Clients:
    """The run's connectors; Flexperto is connected only when a video booking needs it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.timify = timify.from_settings(settings)
        self._flexperto: flexperto.Flexperto | None = None
        self._lock = threading.Lock()

    @property
    def flexperto(self) -> flexperto.Flexperto:
        # A batch's workers ask at once: one connector, or a second's calls would be lost
        # to the audit (``drain_calls`` reads the one kept).
        with self._lock:
            if self._flexperto is None:
                self._flexperto = flexperto.from_settings(self.settings)
            return self._flexperto

    def drain_calls(self) -> list[CallRecord]:
        """Calls to every processor since the last drain (what ``audit_failure`` reads)."""
        calls = self.timify.http.drain_calls()
        if self._flexperto is not None:
            calls += self._flexperto.http.drain_calls()
        return calls


def customer_fields(booking: Booking, subject: DataSubject) -> dict:
    """What TIMIFY gets about the customer: the seed's list, only what was given."""
    return {
        "salutation": booking.salutation,
        "first_name": booking.first_name,
        "last_name": booking.last_name,
        "phone": booking.phone,
        "email": subject.email,
        "insurance_number": booking.insurance_number,
        "birth_date": booking.birth_date,
    }


def _placement(settings: Settings, booking: Booking) -> tuple[str, list[str]]:
    """(TIMIFY service id, resource ids): a service point is a resource, video a service."""
    if booking.channel == Channel.video:
        service = settings.timify.video_service_id
        resources: list[str] = []
    else:
        service = settings.timify.branch_service_id
        resource = settings.timify.service_points.get(booking.service_point or "")
        if not resource:
            raise ValueError(f"service point {booking.service_point} has no TIMIFY resource")
        resources = [resource]
    if not service:
        raise ValueError(f"no TIMIFY service configured for {booking.channel} bookings")
    return service, resources


class _Batch:
    """One batch's work inside one transaction.

    Its bookings are delivered by several workers at once (``flows.delivery.per_person``),
    one person's bookings on one worker: the calls go outside ``lock``; the session, the
    bookings' columns, the counts and the events are touched only under it.
    """

    def __init__(self, session: Session, clients: Clients, subjects: dict[uuid.UUID, DataSubject]):
        self.session, self.clients, self.subjects = session, clients, subjects
        self.settings = clients.settings
        self.now = utcnow()
        self.counts: Counter[str] = Counter()
        self.events: list[AuditEvent] = []
        self.customer_ids = self._customer_ids()
        # Per person, so each written by that person's worker only.
        self.sent: dict[uuid.UUID, str] = {}
        # Video bookings registered at Flexperto: purpose (one per booking) → subject → customer,
        # written with the batch's register in one statement, not one per booking.
        self.video_sent: defaultdict[str, dict[uuid.UUID, str | None]] = defaultdict(dict)
        self.lock = threading.RLock()

    def note(self, counted: str, action: str, outcome: str, processor: str, pseudonym: str, booking: Booking) -> None:
        """Count an outcome and audit it, under the lock (workers share both)."""
        with self.lock:
            self.counts[counted] += 1
            self.events.append(
                decision(action, outcome, processor, pseudonym, booking=booking.booking_ref, channel=booking.channel)
            )

    def _customer_ids(self) -> dict[uuid.UUID, str | None]:
        rows = self.session.exec(
            select(Recipient.subject_id, Recipient.external_id).where(
                Recipient.processor == timify.PROCESSOR,
                Recipient.purpose == PURPOSE,
                col(Recipient.subject_id).in_(list(self.subjects)),
            )
        )
        return dict(rows.all())

    def push(self, booking: Booking) -> None:
        subject = self.subjects[booking.subject_id]
        if not subject.email:
            # Erased meanwhile: nothing of the person may leave any more.
            self.note("skipped_erased", "booking.push", "skipped", timify.PROCESSOR, subject.pseudonym, booking)
            return
        service, resources = _placement(self.settings, booking)
        customer = self.clients.timify.upsert_customer(
            str(subject.id), customer_fields(booking, subject), self.customer_ids.get(subject.id)
        )
        self.customer_ids[subject.id] = self.sent[subject.id] = customer
        appointment = self.clients.timify.upsert_appointment(
            booking.booking_ref,
            service_id=service,
            resource_ids=resources,
            start=booking.start_at,
            duration_min=booking.duration_min,
            customer_id=customer,
            notes=booking.concern,
            appointment_id=booking.timify_appointment_id,
        )
        with self.lock:  # an RLock: note takes it again
            booking.timify_appointment_id = appointment
            self.note("pushed", "booking.push", "sent", timify.PROCESSOR, subject.pseudonym, booking)
        if booking.channel == Channel.video:
            self._register_video(booking, subject)

    def _register_video(self, booking: Booking, subject: DataSubject) -> None:
        customer = self.clients.flexperto.upsert_customer(booking.booking_ref, subject.email, booking.phone)
        with self.lock:
            booking.flexperto_customer_id = customer
            booking.chat_purge_due = chat_purge_due(
                booking.start_at, booking.duration_min, self.settings.video_chat_retention_days
            )
            self.video_sent[booking.video_purpose][subject.id] = customer
        self.note("video_registered", "video.register", "sent", flexperto.PROCESSOR, subject.pseudonym, booking)

    def cancel(self, booking: Booking) -> None:
        subject = self.subjects[booking.subject_id]
        if booking.timify_deleted_at is None:
            appointment = booking.timify_appointment_id
            if appointment is None:
                # Maybe created before a crash lost its id: look it up by our external id.
                found = self.clients.timify.get_appointment(booking.booking_ref, external=True)
                appointment = found["id"] if found else None
                self._register_lost_customer(subject)
            if appointment is not None:
                self.clients.timify.delete_appointments([appointment])
                self.note("cancelled", "booking.cancel", "deleted", timify.PROCESSOR, subject.pseudonym, booking)
            with self.lock:
                booking.timify_deleted_at = self.now
        if booking.channel == Channel.video and not booking.flexperto_customer_id and booking.chat_purged_at is None:
            # Maybe registered before a crash lost its id: Flexperto knows it by our booking id.
            found = self.clients.flexperto.find_customer(booking.booking_ref)
            with self.lock:
                booking.flexperto_customer_id = str(found["id"]) if found else None
        if booking.flexperto_customer_id and booking.chat_purged_at is None:
            # No consultation will take place: Flexperto needs nothing any more.
            purge_chat(self, booking, subject.pseudonym)

    def _register_lost_customer(self, subject: DataSubject) -> None:
        """A push whose commit was lost may have created the customer, which stays after the
        cancellation: the register must know it, or an erasure would never ask TIMIFY."""
        if subject.id in self.customer_ids or not subject.email:
            return
        found = self.clients.timify.get_customer(str(subject.id), external=True)
        if found is not None:
            self.customer_ids[subject.id] = self.sent[subject.id] = str(found["id"])

    def commit_register(self) -> None:
        record_sent_many(self.session, timify.PROCESSOR, PURPOSE, dict(self.sent), self.now)
        record_sent_by_purpose(self.session, flexperto.PROCESSOR, self.video_sent, self.now)


def purge_chat(batch: _Batch, booking: Booking, pseudonym: str) -> bool:
    """Delete what Flexperto holds about this booking's chat; record it only when verified."""
    assert booking.flexperto_customer_id is not None
    if not batch.clients.flexperto.purge(booking.flexperto_customer_id):
        batch.note("purge_not_verified", "video.purge", "not_verified", flexperto.PROCESSOR, pseudonym, booking)
        return False
    with batch.lock:  # a worker's (push-bookings) or the task's own thread (the purge)
        booking.chat_purged_at = batch.now
        record_removed_for(batch.session, booking.subject_id, flexperto.PROCESSOR, booking.video_purpose, batch.now)
    batch.note("chat_purged", "video.purge", "verified", flexperto.PROCESSOR, pseudonym, booking)
    return True


def _subjects(session: Session, rows: Sequence[Booking]) -> dict[uuid.UUID, DataSubject]:
    ids = list({b.subject_id for b in rows})
    found = session.exec(select(DataSubject).where(col(DataSubject.id).in_(ids)))
    return {s.id: s for s in found}


# push ---------------------------------------------------------------------------------
class BookingsJob(StreamJob):
    """Bookings through the delivery path (``flows.delivery``): one record is one booking,
    its id the website's booking id; a booking may carry the customer to TIMIFY and, by
    video, to Flexperto; a cancellation carries nothing new."""

    name = "push-bookings"
    cursor = CURSOR
    id_field = "booking_ref"

    def __init__(self, clients: Clients, refs: Sequence[str] | None = None):
        self.clients, self.refs = clients, refs

    def select(self, session: Session, after: int, limit: int) -> list[Booking]:
        return changed_since(session, after, limit)

    def by_ids(self, session: Session, ids: Sequence[str]) -> list[Booking]:
        return by_refs(session, ids)

    def reaches(self, session: Session, rows: Sequence[Booking]) -> list[Reach]:
        sending = [b for b in rows if b.status != BookingStatus.cancelled]
        erased = {s.id for s in _subjects(session, sending).values() if not s.email}
        found = []
        for booking in sending:
            if booking.subject_id in erased:
                continue
            found.append(Reach(booking.subject_id, timify.PROCESSOR, PURPOSE))
            if booking.channel == Channel.video:
                found.append(Reach(booking.subject_id, flexperto.PROCESSOR, booking.video_purpose))
        return found

    def begin(self, session: Session, rows: Sequence[Booking]) -> _Batch:
        batch = _Batch(session, self.clients, _subjects(session, rows))
        if self.refs is not None:
            batch.counts["not_found"] += len(set(self.refs) - {b.booking_ref for b in rows})
        return batch

    def deliver(self, batch: _Batch, row: Booking) -> None:
        if row.status == BookingStatus.cancelled:
            batch.cancel(row)
        else:
            batch.push(row)

    def held(self, batch: _Batch, row: Booking) -> AuditEvent:
        return decision(
            "booking.push",
            "held",
            timify.PROCESSOR,
            batch.subjects[row.subject_id].pseudonym,
            booking=row.booking_ref,
            channel=row.channel,
        )

    def finish(self, batch: _Batch) -> tuple[Counter[str], list[AuditEvent]]:
        batch.commit_register()
        return batch.counts, batch.events


@task(name="push-bookings-batch", cache_policy=NO_CACHE)
@one_line_failure
def push_batch(clients: Clients, limit: int, refs: list[str] | None = None) -> dict:
    """Push the next `limit` changed bookings after the cursor (or exactly `refs`)."""
    return run_batch(BookingsJob(clients, refs), limit, refs)


@flow(name="push-bookings", **NO_RESULTS)
@one_line_failure
def push_bookings(
    # A run by hand names a few bookings; the bound keeps the stored parameters small.
    booking_ids: Annotated[list[BookingRef], Field(max_length=1000)] | None = None,
    records_per_task: Annotated[int, Field(ge=1, le=5000)] = 500,
) -> dict[str, int]:
    """Push new, rescheduled and cancelled bookings to TIMIFY (and video ones to Flexperto).

    Named bookings are pushed as they are now, and the cursor stays where it is.

    Args:
        booking_ids: Push only these booking ids (at most 1,000), not every change since the last run.
        records_per_task: Bookings per Prefect task, 1–5,000.
    """
    clients = Clients(get_settings())
    started = utcnow()
    results = []
    if booking_ids:
        refs = list(dict.fromkeys(booking_ids))
        for start in range(0, len(refs), records_per_task):
            results.append(push_batch(clients, records_per_task, refs[start : start + records_per_task]))
    else:
        # Count first, so no task run is spent finding out that nothing is left.
        with transaction() as session:
            changes = count_changed_since(session, cursor_position(session, CURSOR))
            changes += waiting(session, BookingsJob.name)
        for _ in range(math.ceil(changes / records_per_task)):
            results.append(push_batch(clients, records_per_task))
    counts = tally(results)
    get_run_logger().info("push finished: %s", counts)
    counts_artifact(
        "push-bookings",
        "Buchungen an TIMIFY und Flexperto übermittelt / Bookings pushed to TIMIFY and Flexperto",
        counts,
    )
    fail_if_parked(BookingsJob.name, started)
    return counts


# purge --------------------------------------------------------------------------------
@task(name="purge-video-chats-batch", cache_policy=NO_CACHE)
@one_line_failure
def purge_batch(clients: Clients, today: date, after: int, limit: int) -> tuple[dict, int]:
    """Purge the chats due by `today` of the next `limit` video bookings after seq `after`."""
    with audit_failure(clients, "video.purge"), transaction() as session:
        rows = chats_due(session, today, after, limit)
        if not rows:
            return {}, after
        batch = _Batch(session, clients, _subjects(session, rows))
        for booking in rows:
            purge_chat(batch, booking, batch.subjects[booking.subject_id].pseudonym)
        write_audit(session, call_events(clients.drain_calls()) + batch.events)
    return dict(batch.counts), rows[-1].seq


@flow(name="purge-video-chat-data", **NO_RESULTS)
@one_line_failure
def purge_video_chat_data(
    as_of: date | None = None,
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 500,
) -> dict[str, int]:
    """Delete, and verify, what Flexperto holds about video consultations 90 days on.

    Args:
        as_of: The Berlin calendar day to purge for (empty: today).
        batch_size: Video bookings per Prefect task, 1–5,000.
    """
    settings = get_settings()
    today = as_of or berlin_today(utcnow())
    with transaction() as session:
        due = count_chats_due(session, today)
    results, after = [], 0
    if due:
        clients = Clients(settings)
        for _ in range(math.ceil(due / batch_size)):
            counts, after = purge_batch(clients, today, after, batch_size)
            results.append(counts)
    counts = tally(results)
    counts["due"] = due
    get_run_logger().info("purge finished: %s", counts)
    counts_artifact(
        "purge-video-chat-data",
        "Video-Chatdaten bei Flexperto gelöscht / Video chat data purged at Flexperto",
        counts,
    )
    if counts.get("purge_not_verified"):
        # Visible, and still due: the next run tries again.
        raise JobFailed(f"{counts['purge_not_verified']} chat deletion(s) at flexperto not verified")
    return counts
