"""Erasure requests (Art. 17 GDPR) and their per-processor tasks (Art. 19 GDPR).

One ``ErasureRequest`` per request a data subject made; one ``ErasureTask`` per recipient
that, according to the recipient register, still holds the subject's data. A task moves::

    pending ─claim─> requested ─erase─> verified                 (read back: absent)
                         │          └─> awaiting_processor ─verify─> verified   (202: later)
                         ├─> failed ─(next run)─> requested
                         ├─> restricted (legal hold, until a date) ─(hold over)─> requested
                         └─> manual_pending (no API) ─confirm with evidence─> verified

A run claims the tasks it works with one UPDATE (``claim``), so two runs never call a
processor twice for one task. The request is completed, and the controller's own copy
erased, only once every task is verified. Nothing personal is stored here: the subject is a
foreign key, free texts are refused when they look like personal data.

Example::

    with transaction() as session:
        request = open_request(session, email="erika@example.de", received_at=now,
                               channel="letter", reference="Brief vom 3. März")
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Index, Table, UniqueConstraint, and_, or_, text, update
from sqlalchemy import select as sa_select
from sqlmodel import Field, Session, SQLModel, col, select

from core.settings import get_settings
from models.bookings import Booking
from models.consent import UNCONFIRMED, ConsentRecord, ConsentState
from models.db import claim_rows
from models.deadlines import apply_extension, due_date, received_day, urgency
from models.identity import normalise_email, normalise_insurance_number, pseudonym
from models.isic import IsicOrder, OrderStatus, delete_documents
from models.recipients import Recipient
from models.subject_index import SubjectMismatch
from models.subjects import DataSubject, alias_of, erase_subject
from models.types import UTCDateTime, classify, new_id, personal_columns, utcnow

MAX_TEXT = 200
R = TypeVar("R", bound=SQLModel)
MAX_EVIDENCE = 500


class Channel(enum.StrEnum):
    letter = "letter"
    email = "email"
    portal = "portal"
    phone = "phone"
    intake = "intake"


class RequestStatus(enum.StrEnum):
    open = "open"
    completed = "completed"


class Urgency(enum.StrEnum):
    on_time = "on_time"
    due_soon = "due_soon"
    overdue = "overdue"


class TaskState(enum.StrEnum):
    pending = "pending"  # not yet asked
    requested = "requested"  # claimed by a run that is asking the processor now
    awaiting_processor = "awaiting_processor"  # deletion accepted (202), not yet read back absent
    verified = "verified"  # read back absent, or confirmed by a person with evidence
    restricted = "restricted"  # legal hold: kept, restricted, until hold_until
    manual_pending = "manual_pending"  # no API: a person sends the request and confirms
    failed = "failed"  # the last attempt failed; the next run tries again


# What a run may pick up; restricted only once its hold is over (see ``claim``).
WORKABLE = (TaskState.pending, TaskState.requested, TaskState.failed, TaskState.awaiting_processor)
# Left open for a person or a date, not for a run: the deadline watch does not chase these.
WAITING_LAWFULLY = (TaskState.restricted,)


class UnknownSubject(LookupError):
    """No data subject matches the identifiers given; nothing was stored."""


class ErasureRequest(SQLModel, table=True):
    __tablename__ = "erasure_request"
    # One open request per subject: a second letter about the same erasure joins the first.
    __table_args__ = (
        Index(
            "uq_erasure_request_open_subject",
            "subject_id",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id", index=True)
    received_at: datetime = Field(sa_type=UTCDateTime)
    channel: str = Field(max_length=10)  # a Channel
    # The officer's free text (file number, "letter of 3 March"); refused if it looks personal.
    reference: str = Field(default="", max_length=MAX_TEXT)
    status: str = Field(default=RequestStatus.open, max_length=10, index=True)
    extension_months: int = 0
    extension_reason: str | None = Field(default=None, max_length=MAX_TEXT)
    subject_informed_on: date | None = None
    due: date = Field(index=True)
    urgency: str = Field(default=Urgency.on_time, max_length=10)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    controller_erased_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ErasureTask(SQLModel, table=True):
    __tablename__ = "erasure_task"
    __table_args__ = (UniqueConstraint("request_id", "processor", "purpose"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    request_id: uuid.UUID = Field(foreign_key="erasure_request.id", index=True)
    recipient_id: uuid.UUID | None = Field(default=None, foreign_key="recipient.id")
    processor: str = Field(max_length=40)
    purpose: str = Field(max_length=60)
    # The processor's id for the record (pseudonymous: never an e-mail address).
    external_id: str | None = Field(default=None, max_length=200)
    state: str = Field(default=TaskState.pending, max_length=20, index=True)
    attempts: int = 0
    last_http_status: int | None = None
    # Operation and status of the last failure, or what a person must do; never personal.
    detail: str = Field(default="", max_length=MAX_TEXT)
    hold_reason: str | None = Field(default=None, max_length=MAX_TEXT)
    hold_until: date | None = None
    requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # How it was verified: "read_back", "already_absent" or "manual".
    verified_by: str | None = Field(default=None, max_length=20)
    evidence: str | None = Field(default=None, max_length=MAX_EVIDENCE)
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# The free texts (reference, reasons, evidence, detail) are refused when they look personal.
classify(
    ErasureRequest,
    pseudonymous=["id", "subject_id"],
    not_personal=[
        "received_at",
        "channel",
        "reference",
        "status",
        "extension_months",
        "extension_reason",
        "subject_informed_on",
        "due",
        "urgency",
        "created_at",
        "completed_at",
        "controller_erased_at",
    ],
)
classify(
    ErasureTask,
    pseudonymous=["id", "request_id", "recipient_id", "purpose", "external_id"],
    not_personal=[
        "processor",
        "state",
        "attempts",
        "last_http_status",
        "detail",
        "hold_reason",
        "hold_until",
        "requested_at",
        "verified_at",
        "verified_by",
        "evidence",
        "claimed_by",
        "claimed_until",
        "created_at",
        "updated_at",
    ],
)


# free texts -----------------------------------------------------------------------------
_DIGIT_RUN = re.compile(r"\d{6,}")


def check_free_text(value: str, what: str, subject: DataSubject | None = None, limit: int = MAX_TEXT) -> str:
    """`value` stripped, or ValueError when it is too long or looks like personal data.

    Refused: an '@' (an e-mail address), a run of six or more digits (phone, insurance or
    account numbers), and the subject's own names. The message never repeats the text.

    >>> check_free_text(" Brief vom 3. März ", "reference")
    'Brief vom 3. März'
    >>> check_free_text("Tel. 030901820", "reference")
    Traceback (most recent call last):
    ...
    ValueError: reference must not contain personal data (an e-mail address or a long number)
    """
    value = (value or "").strip()
    if len(value) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    if "@" in value or _DIGIT_RUN.search(value):
        raise ValueError(f"{what} must not contain personal data (an e-mail address or a long number)")
    if subject is not None:
        lowered = value.casefold()
        for name in (subject.first_name, subject.last_name):
            if name and len(name) >= 3 and name.casefold() in lowered:
                raise ValueError(f"{what} must not contain the person's name")
    return value


# requests -------------------------------------------------------------------------------
def find_subject(
    session: Session,
    *,
    email: str | None = None,
    insurance_number: str | None = None,
    subject_id: uuid.UUID | str | None = None,
    key: bytes | None = None,
    at: datetime | None = None,
) -> DataSubject:
    """The one subject all given identifiers point at.

    By normalised e-mail (or, with the pseudonym `key`, a subject erased earlier who kept
    only the pseudonym of that address; with `key` and the request's receipt time `at`
    first the subject whose address it was then, corrected or erased since:
    ``AddressAlias``), by insurance number, by our id. Raises ValueError
    when none is given or one is malformed, SubjectMismatch when they point at different
    people, UnknownSubject when nobody matches. Messages never repeat an identifier.
    """
    if not (email or insurance_number or subject_id):
        raise ValueError("give an e-mail address, an insurance number or a subject id")
    found: list[DataSubject | None] = []
    if email:
        address = normalise_email(email)
        condition = col(DataSubject.email) == address
        if key is not None:
            # Only a subject that kept nothing but the pseudonym (erased): one whose address
            # was corrected (Art. 16) is not found under the address it was first seen with.
            condition = or_(
                condition,
                and_(col(DataSubject.pseudonym) == pseudonym(key, "email", address), col(DataSubject.email).is_(None)),
            )
        # Whose the address was when the request was received, if a correction or an
        # erasure took it from them since, whoever has it now; else by the address.
        former = alias_of(session, pseudonym(key, "email", address), at) if key is not None and at is not None else None
        if former is not None:
            found.append(session.get(DataSubject, former))
        else:
            found.append(session.exec(select(DataSubject).where(condition)).first())
    if insurance_number:
        number = normalise_insurance_number(insurance_number)
        found.append(session.exec(select(DataSubject).where(DataSubject.insurance_number == number)).first())
    if subject_id:
        try:
            sid = subject_id if isinstance(subject_id, uuid.UUID) else uuid.UUID(str(subject_id))
        except ValueError:
            raise ValueError("subject id is not a UUID") from None
        found.append(session.get(DataSubject, sid))
    if any(subject is None for subject in found):
        raise UnknownSubject("no data subject matches the identifiers given")
    if len({subject.id for subject in found if subject is not None}) > 1:
        raise SubjectMismatch("the identifiers given belong to different data subjects")
    subject = found[0]
    assert subject is not None
    return subject


def open_request(
    session: Session,
    *,
    email: str | None = None,
    insurance_number: str | None = None,
    subject_id: uuid.UUID | str | None = None,
    received_at: datetime,
    channel: str,
    reference: str = "",
    key: bytes | None = None,
    now: datetime | None = None,
) -> ErasureRequest:
    """Open the erasure request, one task per recipient still holding the subject's data.

    Idempotent: while the subject has an open request, that one is returned (with tasks
    added for recipients that received data since). Raises (and stores nothing) for an
    unknown subject, identifiers of different people, a bad channel, a receipt time
    without a zone or in the future, or a reference that looks personal. Does not commit.
    """
    now = now or utcnow()
    channel = Channel(channel)
    if received_at.tzinfo is None:
        raise ValueError("received_at needs a timezone")
    if received_at > now + timedelta(minutes=5):
        raise ValueError("received_at lies in the future")
    subject = find_subject(
        session, email=email, insurance_number=insurance_number, subject_id=subject_id, key=key, at=received_at
    )
    reference = check_free_text(reference, "reference", subject)
    request = open_request_of(session, subject.id)
    if request is None:
        request = ErasureRequest(
            subject_id=subject.id,
            received_at=received_at,
            channel=channel,
            reference=reference,
            due=due_date(received_at),
            created_at=now,
        )
        request.urgency = urgency(request.due, received_day(now))
        session.add(request)
        session.flush()
    sync_tasks(session, request, now)
    return request


def being_erased(session: Session) -> set[uuid.UUID]:
    """Every subject with an open erasure request (few: each completes within days)."""
    query = select(ErasureRequest.subject_id).where(ErasureRequest.status == RequestStatus.open)
    return set(session.exec(query))


def open_request_of(session: Session, subject_id: uuid.UUID) -> ErasureRequest | None:
    return session.exec(
        select(ErasureRequest).where(
            ErasureRequest.subject_id == subject_id, ErasureRequest.status == RequestStatus.open
        )
    ).first()


# What the catalogue's purposes ask for (core.catalogue.Purpose.local / .hold_while),
# by the names they give: the controller's records, read in models where they live.
def _appointments(session: Session, subject_id: uuid.UUID, purpose: str) -> tuple[tuple[str, str | None], ...]:
    """The subject's bookings not yet deleted at TIMIFY: (booking ref, appointment id or None)."""
    rows = session.exec(
        select(Booking.booking_ref, Booking.timify_appointment_id).where(
            Booking.subject_id == subject_id,
            col(Booking.timify_deleted_at).is_(None),
        )
    )
    return tuple((ref, appointment) for ref, appointment in rows)


def _order_in_progress(session: Session, purpose: str) -> str | None:
    """A student-ID order still at the issuer without a card: its data are still needed."""
    ref = purpose.partition(":")[2]
    order = session.exec(select(IsicOrder).where(IsicOrder.order_ref == ref)).first()
    if order is not None and order.status in (OrderStatus.received, OrderStatus.forwarded):
        return "ISIC order in progress"
    return None


LOCAL_RECORDS = {"appointments": _appointments}
HOLD_CHECKS = {"order_in_progress": _order_in_progress}


def local_records(
    session: Session, kind: str | None, subject_id: uuid.UUID, purpose: str
) -> tuple[tuple[str, str | None], ...]:
    """The controller's records of `kind` an erasure at a processor needs (empty: none)."""
    return LOCAL_RECORDS[kind](session, subject_id, purpose) if kind else ()


def hold_reason(session: Session, kind: str | None, purpose: str) -> str | None:
    """Why the data of `purpose` must be kept right now (a lawful need the check `kind`
    finds), or None."""
    return HOLD_CHECKS[kind](session, purpose) if kind else None


def sync_tasks(session: Session, request: ErasureRequest, now: datetime) -> int:
    """Bring the request's tasks in line with the register; returns how many changed.

    A live register row without a task gets one; a live row whose task was verified means
    the data was sent there again after the erasure, so that task starts over.
    """
    live = session.exec(
        select(Recipient).where(
            Recipient.subject_id == request.subject_id,
            col(Recipient.removed_at).is_(None),
        )
    ).all()
    tasks = {(t.processor, t.purpose): t for t in tasks_of(session, request.id)}
    changed = 0
    for row in live:
        task = tasks.get((row.processor, row.purpose))
        if task is None:
            session.add(
                ErasureTask(
                    request_id=request.id,
                    recipient_id=row.id,
                    processor=row.processor,
                    purpose=row.purpose,
                    external_id=row.external_id,
                    created_at=now,
                    updated_at=now,
                )
            )
            changed += 1
        elif task.state == TaskState.verified:
            task.state, task.verified_at, task.verified_by = TaskState.pending, None, None
            task.external_id = row.external_id or task.external_id
            task.updated_at = now
            changed += 1
    if changed:
        session.flush()
    return changed


def tasks_of(session: Session, request_id: uuid.UUID) -> list[ErasureTask]:
    query = select(ErasureTask).where(ErasureTask.request_id == request_id)
    return list(session.exec(query.order_by(ErasureTask.processor, ErasureTask.purpose)))


def get_by_id(session: Session, model: type[R], request_id: uuid.UUID | str, what: str) -> R:
    """The row of `model` (a request, an erasure task) with this id, or LookupError naming
    `what` (also for a malformed id): an erasure's and a rights request's alike."""
    try:
        rid = request_id if isinstance(request_id, uuid.UUID) else uuid.UUID(str(request_id))
    except ValueError:
        raise LookupError(f"no {what} with this id") from None
    request = session.get(model, rid)
    if request is None:
        raise LookupError(f"no {what} with this id")
    return request


def extend_open(session: Session, request: Any, months: int, reason: str, informed_on: date, today: date) -> None:
    """Extend an open request's deadline by `months` (Art. 12(3)): a reason (checked: nothing
    personal), the subject told in time; an erasure's and a rights request's alike. Raises
    ValueError naming the rule broken (see ``models.deadlines.check_extension``)."""
    if request.status != RequestStatus.open:
        raise ValueError("the request is completed; nothing to extend")
    subject = session.get(DataSubject, request.subject_id)
    apply_extension(request, months, check_free_text(reason, "reason", subject), informed_on, today)


def get_request(session: Session, request_id: uuid.UUID | str) -> ErasureRequest:
    """The request, or LookupError (also for a malformed id)."""
    return get_by_id(session, ErasureRequest, request_id, "erasure request")


def extend(
    session: Session,
    request_id: uuid.UUID | str,
    months: int,
    reason: str,
    informed_on: date,
    today: date,
) -> ErasureRequest:
    """Extend the deadline by `months` (Art. 12(3)): ``extend_open``."""
    request = get_request(session, request_id)
    extend_open(session, request, months, reason, informed_on, today)
    return request


def is_done(tasks: Sequence[ErasureTask]) -> bool:
    """True when every recipient's erasure is verified (none restricted, none manual)."""
    return all(task.state == TaskState.verified for task in tasks)


def waiting_lawfully(tasks: Sequence[ErasureTask]) -> bool:
    """True when all that keeps the request open are legal holds (not a late answer)."""
    open_tasks = [t for t in tasks if t.state != TaskState.verified]
    return bool(open_tasks) and all(t.state in WAITING_LAWFULLY for t in open_tasks)


# claiming -------------------------------------------------------------------------------
def claim(
    session: Session,
    owner: str,
    now: datetime,
    today: date,
    lease: timedelta,
    request_ids: Iterable[uuid.UUID] | None = None,
    limit: int | None = None,
) -> list[uuid.UUID]:
    """Claim the workable tasks (of these requests, else of every open request) for `owner`.

    Workable: pending, requested, failed or awaiting, and restricted whose hold is over;
    not claimed by anyone, or their claim ran out (a crashed run). One UPDATE sets the
    claim, so of two runs at once only one gets a task: on PostgreSQL the candidates are
    locked with FOR UPDATE SKIP LOCKED, on SQLite the write transaction (BEGIN IMMEDIATE)
    serialises the two. Returns the claimed ids; the claim is the caller's until
    ``now + lease`` or until ``release``.
    """
    table = ErasureTask.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    requests_table = ErasureRequest.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    if request_ids is not None:
        scope = table.c.request_id.in_(list(request_ids))
    else:
        scope = table.c.request_id.in_(
            sa_select(requests_table.c.id).where(requests_table.c.status == RequestStatus.open)
        )
    condition = and_(
        scope,
        or_(
            table.c.state.in_([str(s) for s in WORKABLE]),
            and_(table.c.state == TaskState.restricted, table.c.hold_until < today),
        ),
        or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
    )
    return claim_rows(session, ErasureTask, condition, (table.c.request_id, table.c.id), owner, now + lease, limit)


def release(task: ErasureTask) -> None:
    task.claimed_by = task.claimed_until = None


def held_by(task: ErasureTask, owner: str) -> bool:
    """True while `owner`'s claim on the task stands (a lost claim must not write)."""
    return task.claimed_by == owner


# the controller's own copy --------------------------------------------------------------
def erase_controller_copy(session: Session, subject_id: uuid.UUID, now: datetime) -> dict[str, int]:
    """Erase what the controller itself holds about the subject; returns counts per kind.

    Names, contact data, birth date, insurance number, IBAN, IPs, concerns, documents: all
    go. What stays is pseudonymous: the subject row with its pseudonym, ids and dates of
    bookings and orders, consent states, the register, the audit trail, the request. Marks
    processor-side work as done so other jobs do not chase data that is gone (the
    processors' erasures are verified before this runs). Raises RuntimeError when a read
    back still finds personal data. Does not commit.
    """
    counts: dict[str, int] = {}
    subject = session.get(DataSubject, subject_id)
    if subject is None:
        raise LookupError("no data subject with this id")
    bookings = session.exec(select(Booking).where(Booking.subject_id == subject_id)).all()
    for booking in bookings:  # the personal columns go in clear_personal_columns below
        booking.timify_deleted_at = booking.timify_deleted_at or now
        if booking.flexperto_customer_id:
            booking.chat_purged_at = booking.chat_purged_at or now
        booking.updated_at = now
    counts["bookings"] = len(bookings)
    orders = session.exec(select(IsicOrder).where(IsicOrder.subject_id == subject_id)).all()
    for order in orders:
        delete_documents(session, order)
        if order.status == OrderStatus.received:  # never left: the erasure ends the order
            order.status, order.cancelled_at = OrderStatus.cancelled, order.cancelled_at or now
        order.erase_fields(now)
        order.documents_purged_at = order.documents_purged_at or now
        order.cardholder_deletion_requested_at = order.cardholder_deletion_requested_at or now
        order.cardholder_deleted_at = order.cardholder_deleted_at or now
        order.updated_at = now
    counts["isic_orders"] = len(orders)
    consents = session.exec(select(ConsentRecord).where(ConsentRecord.subject_id == subject_id)).all()
    for record in consents:
        if record.state in (*UNCONFIRMED, ConsentState.confirmed):
            record.state, record.withdrawn_at, record.withdraw_channel = ConsentState.withdrawn, now, "erasure"
        record.updated_at = now
    counts["consents"] = len(consents)
    erase_subject(session, subject, get_settings().hmac_key(), now)
    session.flush()
    clear_personal_columns(session, subject_id)
    left = personal_data_left(session, subject_id)
    if left:
        raise RuntimeError(f"controller copy not erased: {', '.join(left)} still hold personal data")
    return counts


# Every column classified personal (``models.types.classify``), in every table, is found
# here: erasure clears them and the read-back checks them, so a column added to a model is
# erased once it is declared personal, without a list here to forget it in.
def personal_tables() -> list[tuple[Table, list]]:
    """(table, its personal columns) for every table that has any, parents first."""
    tables = []
    for table in SQLModel.metadata.sorted_tables:
        columns = personal_columns(table)
        if columns:
            tables.append((table, columns))
    return tables


def subject_rows(table: Table, subject_id: uuid.UUID) -> ColumnElement[bool] | None:
    """The condition selecting the subject's rows of `table`, following foreign keys to
    ``data_subject`` (a booking by its subject_id, a consent event through its consent);
    None when the table does not lead to a subject."""
    subjects = DataSubject.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    if table is subjects:
        return table.c.id == subject_id
    keys = sorted(table.foreign_keys, key=lambda fk: fk.parent.name)
    for fk in keys:
        if fk.column.table is subjects:
            return fk.parent == subject_id
    for fk in keys:
        parent = subject_rows(fk.column.table, subject_id)
        if parent is not None:
            return fk.parent.in_(sa_select(fk.column).where(parent))
    return None


def clear_personal_columns(session: Session, subject_id: uuid.UUID) -> None:
    """Set every nullable personal column of the subject's rows to NULL, in every table.

    A personal column that cannot be NULL (a document's bytes) goes with its row, deleted
    by its own code (``delete_documents``); ``personal_data_left`` finds it if not. Does
    not commit.
    """
    for table, columns in personal_tables():
        condition = subject_rows(table, subject_id)
        nullable = [c for c in columns if c.nullable]
        if condition is None or not nullable:
            continue
        session.execute(
            update(table)
            .where(condition, or_(*(c.is_not(None) for c in nullable)))
            .values({c.name: None for c in nullable})
        )


def personal_data_left(session: Session, subject_id: uuid.UUID) -> list[str]:
    """The tables that still hold personal data of the subject (read back from the database):
    a row of the subject with any column classified personal not NULL."""
    session.expire_all()
    left = []
    for table, columns in personal_tables():
        condition = subject_rows(table, subject_id)
        if condition is None:  # tests/models/test_pii_classes.py makes sure there is none
            raise RuntimeError(f"{table.name} holds personal columns but does not lead to a subject")
        query = sa_select(sa_select(table).where(condition, or_(*(c.is_not(None) for c in columns))).exists())
        if session.execute(query).scalar():
            left.append(table.name)
    return left
