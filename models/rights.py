"""Data-subject rights requests other than erasure (Art. 15, 16, 18, 20, 21 GDPR).

One ``RightsRequest`` per request a data subject made: which right, when and how it reached
us, its Art. 12(3) deadline (``models.deadlines``, exactly as an erasure's) and what came of
it. Nothing personal is stored in the clear: the subject is a foreign key, the reference and
reasons are refused when they look personal (``models.erasure.check_free_text``), and a
rectification's new values (``changes``) are kept only Fernet-encrypted with the document
key, in a column classified personal that is blanked when the request completes (and
cleared with everything else by an erasure).

A request moves ``open`` ─(a run claims it, its handler answers)─> ``completed``; a handler
that cannot finish yet (a processor down) leaves it open with ``detail`` saying why, and the
next run tries again. Runs claim requests with one UPDATE (``claim``), so two runs never
handle one request at once.

Example::

    with transaction() as session:
        request = open_rights_request(session, right=Right.access, email="erika@example.de",
                                      received_at=now, channel="letter", reference="Brief vom 3. März")
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import Field as Bounds
from sqlalchemy import Index, LargeBinary, Text, and_, or_, text, union
from sqlmodel import Field, Session, SQLModel, col, select

from models.db import claim_rows
from models.deadlines import due_date, received_day, urgency
from models.documents import DocumentCipher
from models.erasure import (
    MAX_TEXT,
    Channel,
    RequestStatus,
    UnknownSubject,
    Urgency,
    check_free_text,
    extend_open,
    find_subject,
    get_by_id,
)
from models.identity import normalise_email, normalise_phone
from models.restriction import Restriction
from models.subjects import DataSubject
from models.types import BERLIN, UTCDateTime, classify, new_id, utcnow

__all__ = [
    "CHANGE_FIELDS",
    "Changes",
    "Channel",
    "RequestStatus",
    "Right",
    "RightsRequest",
    "Urgency",
    "changes_of",
    "claim",
    "extend",
    "get_request",
    "held_back",
    "open_rights_request",
    "release",
]

MAX_OUTCOME = 500
# What a rectification may change (Art. 16): the values the controller and its processors hold.
CHANGE_FIELDS = ("email", "salutation", "first_name", "last_name", "phone", "birth_date")


class Right(enum.StrEnum):
    access = "access"  # Art. 15
    portability = "portability"  # Art. 20
    rectification = "rectification"  # Art. 16 (+ 19)
    restriction = "restriction"  # Art. 18
    objection = "objection"  # Art. 21, and withdrawal of every consent (Art. 7(3))


class RightsRequest(SQLModel, table=True):
    __tablename__ = "rights_request"
    # One open request per subject and right: a second letter asking for the same joins it.
    __table_args__ = (
        Index(
            "uq_rights_request_open_subject_right",
            "subject_id",
            "right",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id", index=True)
    right: str = Field(max_length=20)  # a Right
    received_at: datetime = Field(sa_type=UTCDateTime)
    channel: str = Field(max_length=10)  # a models.erasure.Channel
    # The officer's free text (file number, "letter of 3 March"); refused if it looks personal.
    reference: str = Field(default="", max_length=MAX_TEXT)
    status: str = Field(default=RequestStatus.open, max_length=10, index=True)
    extension_months: int = 0
    extension_reason: str | None = Field(default=None, max_length=MAX_TEXT)
    subject_informed_on: date | None = None
    due: date = Field(index=True)
    urgency: str = Field(default=Urgency.on_time, max_length=10)
    # A rectification's new values, Fernet-encrypted JSON (``seal_changes``); blanked when done.
    changes: bytes | None = Field(default=None, sa_type=LargeBinary)
    attempts: int = 0
    # Why the last attempt did not finish (operation and status); never personal.
    detail: str = Field(default="", max_length=MAX_TEXT)
    # What came of it, for the officer: counts, file names, processors; never personal.
    outcome: str = Field(default="", max_length=MAX_OUTCOME)
    # A rectification: the names (never the values) of the fields it corrected in our copy,
    # comma-separated ("email,last_name"); kept when the values are blanked (the proof of
    # consent says an address was corrected, and when, without the old one).
    corrected: str = Field(default="", max_length=200)
    # A rectification: when each field's value was asked for (JSON, field name to time; the
    # names and times only), kept when the values are blanked: a rectification dated before
    # it that arrives later does not undo what it corrected.
    asked_at: str | None = Field(default=None, sa_type=Text)
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


classify(
    RightsRequest,
    personal=["changes"],
    pseudonymous=["id", "subject_id"],
    not_personal=[
        "right",
        "received_at",
        "channel",
        "reference",
        "status",
        "extension_months",
        "extension_reason",
        "subject_informed_on",
        "due",
        "urgency",
        "attempts",
        "detail",
        "outcome",
        "corrected",
        "asked_at",
        "claimed_by",
        "claimed_until",
        "created_at",
        "updated_at",
        "completed_at",
    ],
)


# a rectification's new values -------------------------------------------------------------
# As intake.types refuses them in a line's text (models cannot import intake): C0 and C1
# controls, line and paragraph separators, bidi embeddings, overrides and isolates.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_AGE_YEARS = 130  # as intake.booking: no one is older


class Changes(BaseModel):
    """A rectification's new values (Art. 16): at least one; unknown fields are refused.

    Validated at every door (the ``rights.request`` intake line, the officer's form, the
    CLI): e-mail by email-validator, phone by phonenumbers (E.164), a plausible birth date
    (before today, by the validation context's ``now`` when given). Here, not in intake: the
    form's flow module must not import the intake package (Prefect loads an entrypoint with
    ``flows/`` first on the path, where ``flows/intake.py`` would shadow it).
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: Annotated[str, Bounds(max_length=320), AfterValidator(normalise_email)] | None = None
    salutation: str | None = Bounds(default=None, pattern="^(Frau|Herr|divers)$")
    first_name: str | None = Bounds(default=None, min_length=1, max_length=200)
    last_name: str | None = Bounds(default=None, min_length=1, max_length=200)
    phone: Annotated[str, Bounds(max_length=40), AfterValidator(normalise_phone)] | None = None
    birth_date: date | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain_text(cls, data: Any) -> Any:
        # As intake's EventBase does for a line's own fields: no control characters, no numbers as text.
        if isinstance(data, dict):
            for key, value in data.items():
                if key not in cls.model_fields:
                    continue  # refused as an unknown field
                if isinstance(value, str) and _CONTROL.search(value):
                    raise ValueError(f"{key}: must not contain control characters or bidi overrides")
                if isinstance(value, int | float):
                    raise ValueError(f"{key}: must not be a number or boolean")
        return data

    @field_validator("birth_date")
    @classmethod
    def _plausible_birth_date(cls, value: date | None, info: ValidationInfo) -> date | None:
        if value is None:
            return value
        now = (info.context or {}).get("now") or utcnow()
        today = now.astimezone(BERLIN).date()
        if not today - timedelta(days=365 * MAX_AGE_YEARS) < value < today:
            raise ValueError("is not a plausible birth date")
        return value

    @model_validator(mode="after")
    def _some(self) -> Changes:
        if not self.values():
            raise ValueError("give at least one new value")
        return self

    def values(self) -> dict[str, Any]:
        """The new values given (names as ``CHANGE_FIELDS``)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def changes(self) -> dict[str, str]:
        """The new values given as text (dates ISO), as the processors' amenders take them."""
        return {k: _plain(v) if isinstance(v, date) else str(v) for k, v in self.values().items()}


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def seal_changes(document_key: bytes, changes: Mapping[str, Any], now: datetime | None = None) -> bytes:
    """`changes` (a subset of ``CHANGE_FIELDS``) as Fernet-encrypted JSON, checked by
    ``Changes`` whichever door they came through (a bad value must not open a request that
    then fails every run); ValueError as ``checked_changes``."""
    kept = checked_changes(changes, now)
    return DocumentCipher(document_key).encrypt(json.dumps(kept, sort_keys=True).encode())


def checked_changes(changes: Mapping[str, Any], now: datetime | None = None) -> dict[str, str]:
    """`changes` checked by ``Changes``, as text; ValueError naming an unknown or invalid
    field (never its value) or an empty set."""
    unknown = sorted(set(changes) - set(CHANGE_FIELDS))
    if unknown:
        raise ValueError(f"changes: unknown field(s) {', '.join(unknown)}; known: {', '.join(CHANGE_FIELDS)}")
    given = {k: v for k, v in changes.items() if v not in (None, "")}
    if not given:
        raise ValueError("changes: give at least one new value")
    try:
        kept = Changes.model_validate(given, context={"now": now or utcnow()}).changes()
    except ValidationError as exc:
        names = sorted({str(e["loc"][0]) for e in exc.errors() if e.get("loc")})
        raise ValueError(f"changes: invalid {', '.join(names) or 'values'}") from None
    return kept


def asked_times(request: RightsRequest) -> dict[str, datetime]:
    """When each field of a rectification was asked for (``RightsRequest.asked_at``); a
    field without its own time counts as asked for at the request's receipt."""
    recorded = json.loads(request.asked_at) if request.asked_at else {}
    names = set(recorded) | {name for name in request.corrected.split(",") if name}
    return {name: datetime.fromisoformat(recorded[name]) if name in recorded else request.received_at for name in names}


def _merged_changes(
    request: RightsRequest, document_key: bytes, changes: Mapping[str, Any], asked_at: datetime
) -> tuple[dict[str, Any], dict[str, datetime]]:
    """The open rectification's values joined with `changes` asked for at `asked_at`: per
    field, the value asked for last by its time wins, whichever request arrived last (at the
    same instant, the later arrival); with when each was asked for."""
    values = changes_of(request, document_key) or {}
    times = asked_times(request)
    for name, value in changes.items():
        if name not in values or asked_at >= times.get(name, request.received_at):
            values[name], times[name] = value, asked_at
    return values, times


def _asked_json(times: Mapping[str, datetime]) -> str:
    return json.dumps({name: when.isoformat() for name, when in sorted(times.items())})


class Superseded(ValueError):
    """Every value a rectification asks for was corrected by one asked for later and
    completed already; the reason is safe to show, `pseudonym` names the person."""

    def __init__(self, reason: str, pseudonym: str):
        super().__init__(reason)
        self.pseudonym = pseudonym


def _not_superseded(
    session: Session, subject: DataSubject, changes: Mapping[str, Any], asked_at: datetime
) -> dict[str, Any]:
    """`changes` without the fields a completed rectification corrected with a value asked
    for after `asked_at` (each field by its own time, ``asked_times``): by event time that
    value is the latest decision, whichever arrived first (an open rectification is joined
    field by field instead, ``_merged_changes``). Superseded if none is left."""
    completed = session.exec(
        select(RightsRequest).where(
            RightsRequest.subject_id == subject.id,
            RightsRequest.right == Right.rectification,
            RightsRequest.status == RequestStatus.completed,
            RightsRequest.corrected != "",
        )
    ).all()
    done = {
        name
        for request in completed
        for name, when in asked_times(request).items()
        if name in request.corrected.split(",") and when > asked_at
    }
    left = {name: value for name, value in changes.items() if name not in done}
    if not left:
        raise Superseded("every value it asks for was corrected by a later request", subject.pseudonym)
    return left


def changes_of(request: RightsRequest, document_key: bytes) -> dict[str, Any] | None:
    """A rectification's new values (birth_date as ``date``), or None when none are stored."""
    if request.changes is None:
        return None
    values = json.loads(DocumentCipher(document_key).decrypt(request.changes))
    # Sealed with the values by the first version of per-field times (175131a, hours on
    # main): no field of the request; the times are in ``asked_at`` now.
    values.pop("_at", None)
    if values.get("birth_date"):
        values["birth_date"] = date.fromisoformat(values["birth_date"])
    return values


# requests ---------------------------------------------------------------------------------
def open_rights_request(
    session: Session,
    *,
    right: Right | str,
    email: str | None = None,
    insurance_number: str | None = None,
    subject_id: uuid.UUID | str | None = None,
    received_at: datetime,
    channel: str,
    reference: str = "",
    changes: Mapping[str, Any] | None = None,
    document_key: bytes | None = None,
    key: bytes | None = None,
    now: datetime | None = None,
) -> tuple[RightsRequest, bool]:
    """Open the request, or join the subject's open one for the same right; (request, opened).

    The subject is found as for an erasure (``models.erasure.find_subject``; with the
    pseudonym `key`, also one erased earlier). A rectification needs `changes` (sealed with
    `document_key`); joining an open rectification, a field's value asked for later (by
    `received_at`, not by arrival) replaces the one it has. Raises
    (and stores nothing) for an unknown subject, identifiers of different people, a bad
    right or channel, a receipt time without a zone or in the future, a reference that looks
    personal, changes for another right or none for a rectification, and ``Superseded`` for a
    rectification whose every field a completed one corrected with a value asked for later.
    Does not commit.
    """
    now = now or utcnow()
    try:
        right = Right(right)
    except ValueError:
        raise ValueError(f"right must be one of {', '.join(r.value for r in Right)}") from None
    channel = Channel(channel)
    if received_at.tzinfo is None:
        raise ValueError("received_at needs a timezone")
    if received_at > now + timedelta(minutes=5):
        raise ValueError("received_at lies in the future")
    if right == Right.rectification and not changes:
        raise ValueError("a rectification needs the new values (changes)")
    if right != Right.rectification and changes:
        raise ValueError("only a rectification carries changes")
    if changes and document_key is None:
        raise ValueError("no document key to store the new values encrypted")
    subject = find_subject(
        session, email=email, insurance_number=insurance_number, subject_id=subject_id, key=key, at=received_at
    )
    if right in (Right.rectification, Right.restriction) and subject.email is None and subject.insurance_number is None:
        # Nothing of the person is held (erased, or only the pseudonym of an address a kept
        # request named): nothing to correct or restrict, a correction's new values would be
        # kept for nobody, and a restriction would hold back their sign-up arriving later.
        raise UnknownSubject("no data subject matches the identifiers given")
    reference = check_free_text(reference, "reference", subject)
    # The open request first, then what completed ones corrected: its lock waits for a
    # completion in flight (PostgreSQL), whose corrections the check then sees.
    request = open_request_of(session, subject.id, right, lock=bool(changes))
    if changes:
        changes = _not_superseded(session, subject, changes, received_at)
    if request is not None:
        if changes:
            assert document_key is not None
            merged, times = _merged_changes(request, document_key, changes, received_at)
            request.changes = seal_changes(document_key, merged, now)
            request.asked_at = _asked_json(times)
            request.updated_at = now
        return request, False
    request = RightsRequest(
        subject_id=subject.id,
        right=right,
        received_at=received_at,
        channel=channel,
        reference=reference,
        due=due_date(received_at),
        changes=seal_changes(document_key, changes, now) if changes and document_key else None,
        asked_at=_asked_json(dict.fromkeys(changes, received_at)) if changes else None,
        created_at=now,
        updated_at=now,
    )
    request.urgency = urgency(request.due, received_day(now))
    session.add(request)
    session.flush()
    return request, True


def open_request_of(
    session: Session, subject_id: uuid.UUID, right: Right | str, lock: bool = True
) -> RightsRequest | None:
    """The subject's open request for `right`, or None; with `lock`, locked until the
    transaction ends (PostgreSQL), so a join that changes it (a rectification's values) and
    its completion do not overwrite each other. A join that changes nothing takes no lock:
    two imports joining the same people's requests in another order would deadlock."""
    query = select(RightsRequest).where(
        RightsRequest.subject_id == subject_id,
        RightsRequest.right == str(right),
        RightsRequest.status == RequestStatus.open,
    )
    return session.exec(query.with_for_update() if lock else query).first()


def held_back(session: Session) -> set[uuid.UUID]:
    """Every subject whose new data the jobs hold back now (``flows.delivery``), in one
    query: restricted (Art. 18, ``models.restriction.restricted``), or with a rectification
    open (Art. 16: until every processor is verified our copy and the processors' may name
    the person differently; a push by our copy's address would make a second record there).
    What carries nothing new (a removal, a cancellation) still goes: an objection or erasure
    arriving meanwhile ends at the processors."""
    rectifying = select(RightsRequest.subject_id).where(
        RightsRequest.right == Right.rectification, RightsRequest.status == RequestStatus.open
    )
    restricted_now = select(Restriction.subject_id).where(col(Restriction.lifted_at).is_(None))
    return set(session.execute(union(restricted_now, rectifying)).scalars())


def get_request(session: Session, request_id: uuid.UUID | str) -> RightsRequest:
    """The request, or LookupError (also for a malformed id)."""
    return get_by_id(session, RightsRequest, request_id, "rights request")


def extend(
    session: Session,
    request_id: uuid.UUID | str,
    months: int,
    reason: str,
    informed_on: date,
    today: date,
) -> RightsRequest:
    """Extend the deadline by `months` (Art. 12(3)): a reason, the subject told in time.

    The same rules as an erasure's (``models.deadlines.apply_extension``); ValueError naming
    the one broken.
    """
    request = get_request(session, request_id)
    extend_open(session, request, months, reason, informed_on, today)
    request.updated_at = utcnow()
    return request


def complete(request: RightsRequest, outcome: str, now: datetime) -> None:
    """Mark the request answered: its outcome (checked: nothing personal), the time, the
    deadline's last judgement; the new values of a rectification are blanked."""
    request.outcome = check_free_text(outcome, "outcome", limit=MAX_OUTCOME)
    request.status, request.completed_at, request.updated_at = RequestStatus.completed, now, now
    request.urgency = urgency(request.due, received_day(now))
    request.changes = None
    request.detail = ""
    release(request)


# claiming ---------------------------------------------------------------------------------
def claim(
    session: Session,
    owner: str,
    now: datetime,
    lease: timedelta,
    request_ids: Iterable[uuid.UUID] | None = None,
    rights: Iterable[Right | str] | None = None,
    limit: int | None = None,
    skip: Iterable[uuid.UUID] = (),
) -> list[uuid.UUID]:
    """Claim open requests (these, else every open one; of these rights, else any; not those
    in `skip`) for `owner` until ``now + lease``: those nobody holds or whose claim ran out
    (a crashed run); at most `limit`, oldest first.

    One UPDATE sets the claim, so of two runs at once only one gets a request (PostgreSQL:
    FOR UPDATE SKIP LOCKED; SQLite: the write transaction serialises them), as
    ``models.erasure.claim`` does for erasure tasks. Returns the claimed ids, oldest first.
    """
    table = RightsRequest.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    condition = and_(
        table.c.status == RequestStatus.open,
        or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
    )
    if request_ids is not None:
        condition = and_(condition, table.c.id.in_(list(request_ids)))
    if rights is not None:
        condition = and_(condition, table.c.right.in_([str(r) for r in rights]))
    skip = list(skip)
    if skip:
        condition = and_(condition, table.c.id.not_in(skip))
    return claim_rows(session, RightsRequest, condition, (table.c.received_at, table.c.id), owner, now + lease, limit)


def release(request: RightsRequest) -> None:
    request.claimed_by = request.claimed_until = None


def held_by(request: RightsRequest, owner: str) -> bool:
    """True while `owner`'s claim on the request stands (a lost claim must not write)."""
    return request.claimed_by == owner
