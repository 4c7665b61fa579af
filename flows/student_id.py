"""Student-ID (ISIC) orders → the card issuer, with deletion on cancellation (seed 003, XIV).

Three flows, one Prefect task per batch of orders:

- ``forward-student-id-orders``: every order changed since the cursor. A new order goes to
  the issuer in the order its API needs: cardholder, then photo, then card request (a photo
  sent after the card does not reach the card). A cancelled order's card is voided, the
  issuer is asked to delete the cardholder, and every document and field of the order is
  deleted here, verified by reading back.
- ``sync-student-id-order-status``: follows forwarded orders until the card is issued, and
  asynchronous cardholder deletions (202) until the issuer answers 404.
- ``purge-student-id-documents``: deletes the uploads a configurable number of days after
  the card was issued (default 30: the order and follow-up questions are done), verified.

The issuer receives only ``connectors.isic.ALLOWED_FIELDS`` and the photo: never the IBAN,
the postal code, the phone password or the other documents (see the README).
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field
from sqlmodel import Session, col, select

from connectors import isic
from core.clock import berlin_today
from core.settings import get_settings
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
from models.cursors import cursor_position
from models.db import scrub_journal, transaction
from models.documents import DocumentCipher
from models.isic import (
    IsicOrder,
    OrderStatus,
    by_status,
    changed_since,
    count_by_status,
    count_changed_since,
    count_deletions_pending,
    delete_documents,
    deletions_pending,
    documents_due,
    sealed_photo,
)
from models.recipients import record_removed_for, record_sent_by_purpose
from models.subjects import DataSubject
from models.types import utcnow

CURSOR = "isic:orders"
PROCESSOR = isic.PROCESSOR
ACTIVE, VOIDED = "ACTIVE", "VOIDED"


class _Batch:
    """One batch's work inside one transaction: counts, audit events, the register.

    ``forward-student-id-orders`` delivers its orders from several workers at once
    (``flows.delivery.per_person``), one person's orders on one worker: the calls go outside
    ``lock``; the session, the orders' columns, the counts and the events only under it.
    """

    def __init__(self, session: Session, client: isic.Isic, orders: list[IsicOrder]):
        self.session, self.client = session, client
        self.now = utcnow()
        self.counts: Counter[str] = Counter()
        self.events: list[AuditEvent] = []
        ids = list({o.subject_id for o in orders})
        self.subjects = {s.id: s for s in session.exec(select(DataSubject).where(col(DataSubject.id).in_(ids)))}
        self.lock = threading.RLock()
        # Purpose → subject id → order reference of the orders the issuer confirmed: "holds"
        # in the register in one statement per purpose at the batch's end, not per order.
        self.sent: defaultdict[str, dict[uuid.UUID, str | None]] = defaultdict(dict)

    def decide(self, action: str, outcome: str, order: IsicOrder, count: str | None = None) -> None:
        with self.lock:
            self.counts[count or outcome] += 1
            self.events.append(
                decision(action, outcome, PROCESSOR, self.subjects[order.subject_id].pseudonym, order=order.order_ref)
            )

    def finish(self) -> None:
        write_audit(self.session, call_events(self.client.http.drain_calls()) + self.events)

    def register_removed(self, order: IsicOrder) -> None:
        record_removed_for(self.session, order.subject_id, PROCESSOR, order.purpose, self.now)


def _run_batch(
    client: isic.Isic,
    action: str,
    load: Callable[[Session], list[IsicOrder]],
    work: Callable[[_Batch, IsicOrder], None],
) -> tuple[dict, int | None]:
    """Load a batch, work each order, write the audit; returns counts and the last seq."""
    with audit_failure(client.http, action), transaction() as session:
        orders = load(session)
        if not orders:
            return {}, None
        batch = _Batch(session, client, orders)
        for order in orders:
            work(batch, order)
        batch.finish()
    return dict(batch.counts), orders[-1].seq


def _pages(count: int, size: int, run: Callable[[int], tuple[dict, int | None]]) -> list[dict]:
    """Run ceil(count/size) keyset-paged tasks; `run(after)` returns counts and the next key."""
    results, after = [], 0
    for _ in range(math.ceil(count / size)):
        counts, last = run(after)
        results.append(counts)
        if last is None:
            break
        after = last
    return results


# forward ------------------------------------------------------------------------------
def forward(batch: _Batch, order: IsicOrder, cipher: DocumentCipher) -> None:
    """Cardholder → photo → card. Each call is idempotent or checked, so a re-run after a
    crash between any two of them repeats nothing the issuer would hold twice."""
    subject = batch.subjects[order.subject_id]
    if not subject.email or order.fields_erased_at:
        batch.decide("isic.forward", "skipped", order, "skipped_erased")
        return
    batch.client.set_cardholder(
        order.order_ref,
        first_name=order.first_name,  # type: ignore[arg-type]  # set while not erased (checked above)
        last_name=order.last_name,  # type: ignore[arg-type]  # set while not erased (checked above)
        date_of_birth=order.birth_date,  # type: ignore[arg-type]  # set while not erased (checked above)
        email=subject.email,
        institution=order.institution,  # type: ignore[arg-type]  # set while not erased (checked above)
        student_status=order.student_status,  # type: ignore[arg-type]  # set while not erased (checked above)
    )
    with batch.lock:
        order.cardholder_set_at = batch.now
        sealed = sealed_photo(batch.session, order.id)
    if sealed is None:  # purged or never there: a card without a photo is useless
        raise ValueError(f"order {order.order_ref} has no photo")
    content = sealed.open(cipher)  # outside the lock: the other workers' calls go on meanwhile
    batch.client.set_photo(order.order_ref, content, sealed.media_type)
    del content, sealed  # a photo may be megabytes: not kept while the card is requested
    with batch.lock:
        order.photo_set_at = batch.now
    card = batch.client.request_card(order.order_ref)
    with batch.lock:
        order.card_number, order.card_status = card["cardNumber"], card["status"]
        order.card_has_photo = bool(card.get("hasPhoto"))
        order.status = OrderStatus.forwarded
        batch.sent[order.purpose][order.subject_id] = order.order_ref
    batch.decide("isic.forward", "sent", order, "forwarded")


def cancel(batch: _Batch, order: IsicOrder) -> None:
    """Void the card, ask the issuer to delete the cardholder, delete everything here."""
    if order.cardholder_deletion_requested_at is None:
        # Listed rather than trusted from our row: a crash may have lost a card's number.
        for card in batch.client.cards(order.order_ref):
            if card.get("status") != VOIDED:
                batch.client.void_card(card["cardNumber"])
                with batch.lock:
                    order.card_status = VOIDED
                batch.decide("isic.void_card", "voided", order)
        answer = batch.client.delete_cardholder(order.order_ref)
        with batch.lock:
            order.cardholder_deletion_requested_at = batch.now
            if answer == "gone":  # never reached the issuer, or already deleted
                order.cardholder_deleted_at = batch.now
                batch.register_removed(order)
        batch.decide(
            "isic.delete_cardholder",
            "requested" if answer == "pending" else "verified",
            order,
            "deletion_requested" if answer == "pending" else "deletion_verified",
        )
    erase_locally(batch, order)


def erase_locally(batch: _Batch, order: IsicOrder) -> None:
    with batch.lock:  # database work only, on whichever worker cancels the order
        if order.fields_erased_at is not None:
            return
        documents_gone = delete_documents(batch.session, order)
        order.erase_fields(batch.now)
        batch.session.flush()
        batch.session.refresh(order)
        if not documents_gone or order.iban is not None or order.first_name is not None:
            raise JobFailed(f"order {order.order_ref}: local erasure not verified")
        order.documents_purged_at = order.documents_purged_at or batch.now
    batch.decide("isic.erase_local", "verified", order, "erased_locally")


class ForwardJob(StreamJob):
    """Orders through the delivery path (``flows.delivery``): one record is one order, its id
    the order reference; a received order may carry the cardholder to the issuer, a
    cancellation carries nothing new (it voids, deletes, erases here)."""

    name = "forward-student-id-orders"
    cursor = CURSOR
    id_field = "order_ref"

    def __init__(self, client: isic.Isic):
        self.client, self.clients = client, client.http
        self.cipher = DocumentCipher(get_settings().document_key_bytes())

    def select(self, session: Session, after: int, limit: int) -> list[IsicOrder]:
        return changed_since(session, after, limit)

    def by_ids(self, session: Session, ids: Sequence[str]) -> list[IsicOrder]:
        query = select(IsicOrder).where(col(IsicOrder.order_ref).in_(list(ids)))
        return list(session.exec(query.order_by(col(IsicOrder.seq))))

    def reaches(self, session: Session, rows: Sequence[IsicOrder]) -> list[Reach]:
        return [
            Reach(o.subject_id, PROCESSOR, o.purpose)
            for o in rows
            if o.status == OrderStatus.received and o.fields_erased_at is None
        ]

    def begin(self, session: Session, rows: Sequence[IsicOrder]) -> _Batch:
        return _Batch(session, self.client, list(rows))

    def deliver(self, batch: _Batch, row: IsicOrder) -> None:
        if row.status == OrderStatus.cancelled:
            cancel(batch, row)
        elif row.status == OrderStatus.received:
            forward(batch, row, self.cipher)

    def held(self, batch: _Batch, row: IsicOrder) -> AuditEvent:
        batch.decide("isic.forward", "held", row, "held_erasure_open")
        batch.counts["held_erasure_open"] -= 1  # counted by the delivery path
        return batch.events.pop()

    def finish(self, batch: _Batch) -> tuple[Counter[str], list[AuditEvent]]:
        record_sent_by_purpose(batch.session, PROCESSOR, batch.sent, batch.now)
        return batch.counts, batch.events


@task(name="forward-student-id-batch", cache_policy=NO_CACHE)
@one_line_failure
def forward_batch(client: isic.Isic, limit: int) -> dict:
    """Forward or cancel the next `limit` changed orders after the cursor."""
    return run_batch(ForwardJob(client), limit)


@flow(name="forward-student-id-orders", **NO_RESULTS)
@one_line_failure
def forward_student_id_orders(
    records_per_task: Annotated[int, Field(ge=1, le=2000)] = 200,
) -> dict[str, int]:
    """Forward new student-ID orders to the issuer; carry out cancellations everywhere.

    Args:
        records_per_task: Orders per Prefect task, 1–2,000.
    """
    client = isic.from_settings(get_settings())
    started = utcnow()
    with transaction() as session:
        changes = count_changed_since(session, cursor_position(session, CURSOR))
        changes += waiting(session, ForwardJob.name)
    results = [forward_batch(client, records_per_task) for _ in range(math.ceil(changes / records_per_task))]
    counts = _report(
        "forward-student-id-orders",
        "Studierendenausweis-Bestellungen weitergeleitet und storniert / Student-ID orders forwarded and cancelled",
        results,
    )
    if counts.get("erased_locally"):  # cancelled orders: their old pages must leave the WAL
        scrub_journal()
    fail_if_parked(ForwardJob.name, started)
    return counts


# status -------------------------------------------------------------------------------
@task(name="sync-student-id-status-batch", cache_policy=NO_CACHE)
@one_line_failure
def status_batch(client: isic.Isic, after: int, limit: int) -> tuple[dict, int | None]:
    retention = timedelta(days=get_settings().isic.document_retention_days)

    def work(batch: _Batch, order: IsicOrder) -> None:
        card = next((c for c in batch.client.cards(order.order_ref) if c.get("cardNumber") == order.card_number), None)
        if card is None:
            batch.decide("isic.status", "card_missing", order)
            return
        order.card_status = card["status"]
        if card["status"] == ACTIVE:
            order.status, order.issued_at = OrderStatus.issued, batch.now
            order.documents_purge_due = berlin_today(batch.now) + retention
            batch.decide("isic.status", "issued", order)
        else:
            batch.counts[f"still_{str(card['status']).lower()}"] += 1

    return _run_batch(client, "isic.status", lambda s: by_status(s, OrderStatus.forwarded, after, limit), work)


@task(name="verify-student-id-deletions-batch", cache_policy=NO_CACHE)
@one_line_failure
def deletion_batch(client: isic.Isic, after: int, limit: int) -> tuple[dict, int | None]:
    def work(batch: _Batch, order: IsicOrder) -> None:
        if batch.client.deletion_verified(order.order_ref):
            order.cardholder_deleted_at = batch.now
            batch.register_removed(order)
            batch.decide("isic.delete_cardholder", "verified", order, "deletion_verified")
        else:
            batch.counts["deletion_pending"] += 1

    return _run_batch(client, "isic.verify_deletion", lambda s: deletions_pending(s, after, limit), work)


@flow(name="sync-student-id-order-status", **NO_RESULTS)
@one_line_failure
def sync_student_id_order_status(
    batch_size: Annotated[int, Field(ge=1, le=2000)] = 200,
) -> dict[str, int]:
    """Follow forwarded orders until the card is issued, and deletions until verified.

    Args:
        batch_size: Orders per Prefect task, 1–2,000.
    """
    client = isic.from_settings(get_settings())
    with transaction() as session:
        forwarded = count_by_status(session, OrderStatus.forwarded)
        pending = count_deletions_pending(session)
    results = _pages(forwarded, batch_size, lambda after: status_batch(client, after, batch_size))
    results += _pages(pending, batch_size, lambda after: deletion_batch(client, after, batch_size))
    return _report(
        "sync-student-id-order-status",
        "Status der Studierendenausweis-Bestellungen / Student-ID order status",
        results,
    )


# purge --------------------------------------------------------------------------------
@flow(name="purge-student-id-documents", **NO_RESULTS)
@one_line_failure
def purge_student_id_documents(
    as_of: date | None = None,
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 500,
) -> dict[str, int]:
    """Delete the uploads of issued orders once their retention is over; verified.

    Args:
        as_of: The Berlin calendar day to purge for (empty: today).
        batch_size: Orders per database commit, 1–5,000.
    """
    today = as_of or berlin_today(utcnow())
    counts: Counter[str] = Counter()
    while True:
        with transaction() as session:
            orders = documents_due(session, today, batch_size)
            if not orders:
                break
            subjects = dict(
                session.exec(
                    select(DataSubject.id, DataSubject.pseudonym).where(
                        col(DataSubject.id).in_([o.subject_id for o in orders])
                    )
                ).all()
            )
            events, now = [], utcnow()
            for order in orders:
                if not delete_documents(session, order):
                    raise JobFailed(f"order {order.order_ref}: documents not deleted")
                order.documents_purged_at = now
                counts["documents_purged"] += 1
                events.append(
                    decision(
                        "isic.purge_documents", "verified", None, subjects[order.subject_id], order=order.order_ref
                    )
                )
            write_audit(session, events)
    if counts["documents_purged"]:  # the deleted documents' pages must not stay in the WAL
        scrub_journal()
    return _report(
        "purge-student-id-documents",
        "Unterlagen zu Studierendenausweisen gelöscht / Student-ID documents purged",
        [dict(counts)],
    )


def _report(key: str, title: str, results: list[dict]) -> dict[str, int]:
    counts = tally(results)
    get_run_logger().info("%s: %s", key, counts)
    counts_artifact(key, title, counts)
    return counts
