"""Data-subject rights requests handled like erasures: access, portability, rectification,
restriction, objection (Art. 15, 16, 18, 20, 21 GDPR), each on its Art. 12(3) deadline.

A request is opened from the officer's form (``handle-rights-request``), ``psync request …``
or an intake line (``rights.request``), then answered by the handler its right names in
``HANDLERS``. This module holds what every right shares:

- ``HANDLERS`` and ``register``: a handler takes a ``Ask`` (the request, its subject's ids,
  the new values of a rectification) and returns an ``Outcome``; ``flows.access`` registers
  access and portability, ``flows.amend`` the other three. A handler does its own reading
  and calling (through the connectors' retry policy) and its own transactions; it raises a
  ``ProcessorError`` or ValueError when the request cannot be answered yet, and returns
  ``Outcome(done=False, …)`` when it waits for something (the request stays open).
- ``handle``: claims open requests (``models.rights.claim``; two runs never answer one
  request twice), calls each one's handler, writes the outcome and the audit rows
  (``flows.common.decision``), completes the request.
- ``write_outbox``: what is handed to the person goes to ``PSYNC_RIGHTS_OUTBOX``, each file
  Fernet-encrypted with the document key; ``purge_outbox`` deletes what is older than
  ``PSYNC_RIGHTS_OUTBOX_DAYS`` (the ``follow-up-rights-requests`` flow runs it).
- Two flows: ``handle-rights-request`` (the officer's form: opens a request, or resumes one
  by id, and answers it at once) and ``follow-up-rights-requests`` (every 15 minutes: answers
  what intake opened and what failed before, tidies form runs that kept what was typed in,
  purges the outbox, marks deadlines and fails naming request ids when one needs attention).

Logs, artifacts, run names and state messages carry request ids and counts only; what is
typed into the form is blanked from the stored run as soon as the request is open
(``flows.erasure_form.forget``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from pydantic import ValidationError
from sqlmodel import Session, col, select

from connectors.transport import ProcessorError, redact
from core.clock import berlin_today
from core.settings import Settings, get_settings
from flows import erasure_form as form
from flows import journal
from flows.common import NO_RESULTS, JobFailed, counts_artifact, decision, one_line_failure, run_id, write_audit
from flows.erasure_form import Text
from models.audit import AuditEvent
from models.db import scrub_journal, transaction
from models.deadlines import urgency
from models.documents import DocumentCipher
from models.erasure import MAX_TEXT, Channel, Urgency
from models.restriction import active_restriction
from models.restriction import release as release_held
from models.rights import (
    Changes,
    RequestStatus,
    Right,
    RightsRequest,
    changes_of,
    claim,
    complete,
    extend,
    get_request,
    held_by,
    open_rights_request,
    release,
)
from models.subjects import DataSubject
from models.types import utcnow

LEASE = timedelta(minutes=15)
FORM_FLOW = "handle-rights-request"
# The form's fields that can hold personal data: blanked from every stored run.
PERSONAL = (
    "email",
    "insurance_number",
    "subject_id",
    "reference",
    "new_email",
    "new_first_name",
    "new_last_name",
    "new_phone",
    "new_birth_date",
)
ENCRYPTED_SUFFIX = ".enc"


# what a handler gets and gives ---------------------------------------------------------------
@dataclass(frozen=True)
class Ask:
    """One claimed request as its handler sees it. `changes` only for a rectification (the
    new values, decrypted: personal, never to be logged)."""

    request_id: uuid.UUID
    right: Right
    subject_id: uuid.UUID
    pseudonym: str
    received_at: datetime
    channel: str
    now: datetime
    settings: Settings
    changes: Mapping[str, Any] | None = None


@dataclass
class Outcome:
    """What a handler made of a request.

    `done`: the request is answered (it completes); False leaves it open for the next run.
    `summary`: one line for the officer, stored and audited: counts, processors, file names,
    never personal data. `counts`: for the run's artifact. `events`: further audit events
    (the calls made, one decision per processor), written with the request's own.
    """

    done: bool
    summary: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    events: list[AuditEvent] = field(default_factory=list)
    # False when the handler raised: the calls it made are not in `events`; the call
    # journal brings them to the trail instead (``handle``).
    calls_audited: bool = True
    # A rectification: the names of the fields it corrected in our copy (never the values),
    # kept on the request when it completes (``RightsRequest.corrected``).
    corrected: tuple[str, ...] = ()


Handler = Callable[[Ask], Outcome]
HANDLERS: dict[Right, Handler] = {}


def register(right: Right) -> Callable[[Handler], Handler]:
    """Decorate a handler to answer every request for `right` (one handler per right)."""

    def add(handler: Handler) -> Handler:
        HANDLERS[right] = handler
        return handler

    return add


# opening ------------------------------------------------------------------------------------
def _pseudonym(session: Session, subject_id: uuid.UUID) -> str:
    subject = session.get(DataSubject, subject_id)
    assert subject is not None, "a request's subject exists (foreign key)"
    return subject.pseudonym


def open_request(
    session: Session,
    *,
    right: Right | str,
    email: str | None = None,
    insurance_number: str | None = None,
    subject_id: uuid.UUID | str | None = None,
    received_at: datetime | None = None,
    channel: str = Channel.email,
    reference: str = "",
    changes: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> RightsRequest:
    """``models.rights.open_rights_request`` plus its audit row; the CLI and the form call this.

    Opening here and handing the flow only the request id keeps identifiers out of Prefect.
    """
    now = now or utcnow()
    settings = get_settings()
    request, opened = open_rights_request(
        session,
        right=right,
        email=email,
        insurance_number=insurance_number,
        subject_id=subject_id,
        received_at=received_at or now,
        channel=channel,
        reference=reference,
        changes=changes,
        document_key=settings.document_key_bytes() if changes else None,
        key=settings.hmac_key(),
        now=now,
    )
    write_audit(
        session,
        [
            decision(
                "rights.open",
                "opened" if opened else "joined",
                None,
                _pseudonym(session, request.subject_id),
                f"request={request.id} right={request.right} channel={request.channel} due={request.due}",
            )
        ],
    )
    return request


def extend_request(
    session: Session, request_id: uuid.UUID | str, months: int, reason: str, informed_on: date, today: date
) -> RightsRequest:
    """``models.rights.extend`` plus its audit row (the reason stays in the request only)."""
    request = extend(session, request_id, months, reason, informed_on, today)
    detail = f"request={request.id} right={request.right} months={request.extension_months} due={request.due}"
    write_audit(session, [decision("rights.extend", "extended", None, _pseudonym(session, request.subject_id), detail)])
    return request


# answering ----------------------------------------------------------------------------------
def _asks(ids: Sequence[uuid.UUID], owner: str, now: datetime, settings: Settings) -> list[Ask]:
    """The claimed requests this owner still holds, as their handlers see them."""
    asks = []
    with transaction() as session:
        rows = session.exec(
            select(RightsRequest, DataSubject)
            .join(DataSubject, col(DataSubject.id) == col(RightsRequest.subject_id))
            .where(col(RightsRequest.id).in_(list(ids)), RightsRequest.claimed_by == owner)
            .order_by(col(RightsRequest.received_at))
        ).all()
        for request, subject in rows:
            changes = changes_of(request, settings.document_key_bytes()) if request.changes else None
            asks.append(
                Ask(
                    request.id,
                    Right(request.right),
                    subject.id,
                    subject.pseudonym,
                    request.received_at,
                    request.channel,
                    now,
                    settings,
                    changes,
                )
            )
    return asks


def registry() -> dict[Right, Handler]:
    """``HANDLERS`` of the module ``flows.rights``, where the handlers register.

    Prefect loads a deployment's entrypoint (``flows/rights.py``) as a script under a module
    name of its own; that copy's ``HANDLERS`` would stay empty while ``flows.access`` (and
    ``flows.amend``) register into the importable module's. Dispatch always reads that one.
    """
    from flows import rights  # this very module when imported by name; else the one registered into

    return rights.HANDLERS


def _answer(ask: Ask) -> Outcome:
    """The handler's outcome; a failure becomes an open outcome saying why (never personal)."""
    handler = registry().get(ask.right)
    if handler is None:
        return Outcome(False, f"no handler for {ask.right} requests in this installation")
    try:
        return handler(ask)
    except ProcessorError as exc:
        what = f"HTTP {exc.status}" if exc.status is not None else (exc.reason or "no answer")
        why = f"{exc.processor} {exc.operation}: {what} after {exc.attempts} attempt(s)"
        return Outcome(False, why, calls_audited=False)
    except ValueError as exc:  # our own checks: they name settings and fields, not people
        return Outcome(False, f"not possible: {redact(str(exc))[:150]}", calls_audited=False)
    except Exception as exc:  # noqa: BLE001 - one request's bug must not stop the others
        get_run_logger().error("rights request %s: unexpected %s", ask.request_id, type(exc).__name__)
        return Outcome(False, f"unexpected {type(exc).__name__}", calls_audited=False)


def _record(ask: Ask, owner: str, outcome: Outcome, committed: AuditEvent | None = None) -> str:
    """Write the outcome and its audit rows (with the call journal's `committed` row, when
    its calls are among them); 'completed', 'open' or 'claim_lost'."""
    marker = [committed] if committed is not None else []
    now = utcnow()
    with transaction() as session:
        # Locked: a rectification joining it now waits, and is then seen (``_joined_since``).
        request = session.get(RightsRequest, ask.request_id, with_for_update=True)
        if request is None or not held_by(request, owner):
            lost = decision(f"rights.{ask.right}", "claim_lost", None, ask.pseudonym, f"request={ask.request_id}")
            write_audit(session, [*outcome.events, lost, *marker])
            return "claim_lost"
        request.attempts += 1
        summary = " ".join(outcome.summary.split())[:MAX_TEXT]
        if outcome.done and ask.right == Right.rectification and _joined_since(request, ask):
            # Another rectification joined while this one was answered: its values were not
            # among those told, and completing would blank them. Answered again, all of them.
            outcome = replace(outcome, done=False, summary=f"{summary}; new values joined meanwhile: answered again")
            summary = outcome.summary[:MAX_TEXT]
        if outcome.done:
            try:
                complete(request, summary, now)
            except ValueError:  # a summary that looks personal is not stored
                summary = "answered (summary withheld: it looked personal)"
                complete(request, summary, now)
            word = "completed"
            request.corrected = ",".join(outcome.corrected)
            if ask.right == Right.rectification and active_restriction(session, ask.subject_id) is None:
                # What the jobs held back while it was open (``models.rights.held_back``)
                # goes on their next runs, with the corrected values; in this transaction,
                # so no run sees the request completed and the records still held.
                if released := release_held(session, ask.subject_id, now):
                    summary += f" released={released}"
        else:
            request.detail, request.updated_at = summary, now
            release(request)
            word = "open"
        detail = f"request={request.id} {summary}".strip()
        events = [*outcome.events, decision(f"rights.{ask.right}", word, None, ask.pseudonym, detail), *marker]
        write_audit(session, events)
    return word


def _joined_since(request: RightsRequest, ask: Ask) -> bool:
    """Whether the rectification's values changed since `ask` read them (a request joined)."""
    return (changes_of(request, ask.settings.document_key_bytes()) if request.changes else None) != ask.changes


def handle(
    request_ids: Sequence[uuid.UUID] | None = None,
    rights: Sequence[Right] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Counter[str]:
    """Answer open requests (these, else every open one), one at a time: claim the oldest
    (``models.rights.claim`` with a limit of 1), call its handler, record, then claim the
    next. Each claim is taken just before its answer and leased from then (`clock`: tests
    set it), so however long the answers before it take, no claim lapses while it waits (a
    lapsed one could be claimed and answered by another run, or by a form run resuming it,
    and then answered here again); a request another run holds is left to it. Each request
    is answered once per call (one left open is not tried again until the next). Counts by
    outcome and the handlers' counts (``completed``, ``still_open``, ``access_packages``, …)."""
    settings = get_settings()
    owner = f"{run_id() or 'local'}/{uuid.uuid4().hex[:12]}"
    counts: Counter[str] = Counter()
    answered: list[uuid.UUID] = []
    while True:
        now = clock()
        ids = _claim_next(owner, now, request_ids, rights, answered)
        if not ids:
            break
        answered += ids
        counts.update(_answer_claimed(ids, owner, now, settings))
    if counts["completed"]:  # a rectification's new values were blanked: not in the WAL either
        scrub_journal()
    return counts


def _claim_next(
    owner: str,
    now: datetime,
    request_ids: Sequence[uuid.UUID] | None,
    rights: Sequence[Right] | None,
    answered: Sequence[uuid.UUID],
) -> list[uuid.UUID]:
    """The next open request claimed for `owner` (at most one), or none."""
    with transaction() as session:
        return claim(session, owner, now, LEASE, request_ids, rights, limit=1, skip=answered)


def _answer_claimed(ids: Sequence[uuid.UUID], owner: str, now: datetime, settings: Settings) -> Counter[str]:
    """Answer the claimed requests and record each outcome; the counts."""
    counts: Counter[str] = Counter()
    for ask in _asks(ids, owner, now, settings):
        # Every call a handler makes is journaled as it is made: one that raised, or a
        # process killed before the outcome's commit, still has its calls audited (once).
        job = f"rights.{ask.right}"
        with journal.journaled(job) as batch:
            outcome = _answer(ask)
            word = _record(ask, owner, outcome, journal.committed(job, batch) if outcome.calls_audited else None)
        if outcome.calls_audited:
            journal.discard(batch)
        else:
            journal.settle_now()
        if word == "completed":
            counts["completed"] += 1
        elif word == "open":
            counts["still_open"] += 1
        else:
            counts["claim_lost"] += 1
        counts.update(outcome.counts)
    return counts


# the outbox ---------------------------------------------------------------------------------
def write_outbox(
    name: str, files: Mapping[str, bytes], settings: Settings | None = None, now: datetime | None = None
) -> Path:
    """Write `files` (file name → content) for the person into the folder `name` of the
    outbox, each Fernet-encrypted with the document key (``<file>.enc``); the folder.

    `name` is an id (the request's), never a person's name. A folder written before under
    the same name is replaced whole. Folders and files are readable by the owner only; each
    file goes in under a temporary name and is renamed, so no half-written file is left.
    ``read_outbox`` opens a file; ``purge_outbox`` deletes folders older than
    ``PSYNC_RIGHTS_OUTBOX_DAYS``, judged by `now` against the time stored in the folder.
    """
    settings = settings or get_settings()
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError("an outbox name is a plain id")
    cipher = DocumentCipher(settings.document_key_bytes())
    root = settings.outbox_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = root / name
    staging = root / f".{name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(mode=0o700)
    try:
        for file_name, content in files.items():
            if not file_name or "/" in file_name or file_name.startswith("."):
                raise ValueError("an outbox file name is a plain name")
            path = staging / f"{file_name}{ENCRYPTED_SUFFIX}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(cipher.encrypt(content))
        stamp = os.open(staging / "written_at", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(stamp, "w") as out:  # owner only, like the files
            out.write((now or utcnow()).isoformat())
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_outbox(path: Path, settings: Settings | None = None) -> bytes:
    """The content of one outbox file (``…/<request id>/access.json.enc``), decrypted."""
    settings = settings or get_settings()
    return DocumentCipher(settings.document_key_bytes()).decrypt(Path(path).read_bytes())


def outbox_files(name: str, settings: Settings | None = None) -> list[Path]:
    """The encrypted files of the outbox folder `name`, sorted (empty when there is none)."""
    folder = (settings or get_settings()).outbox_dir() / name
    return sorted(folder.glob(f"*{ENCRYPTED_SUFFIX}")) if folder.is_dir() else []


def forget_outbox(session: Session, subject_id: uuid.UUID, pseudonym: str, settings: Settings | None = None) -> int:
    """Delete every outbox folder made for this person (erasure: nothing of theirs may stay
    on disk): their rights requests' packages and reports, their restrictions' lift letters,
    their proofs of consent (named with their pseudonym). How many folders went."""
    from models.restriction import Restriction

    root = (settings or get_settings()).outbox_dir()
    if not root.is_dir():
        return 0
    names = {str(r) for r in session.exec(select(RightsRequest.id).where(RightsRequest.subject_id == subject_id))}
    lifts = session.exec(select(Restriction.id).where(Restriction.subject_id == subject_id))
    names |= {f"lift-{r}" for r in lifts}
    gone = 0
    for folder in root.iterdir():
        if folder.is_dir() and (folder.name in names or folder.name.startswith(f"consent-proof-{pseudonym}-")):
            shutil.rmtree(folder)
            gone += 1
    return gone


def purge_outbox(now: datetime, settings: Settings | None = None) -> int:
    """Delete every outbox folder written more than ``rights_outbox_days`` before `now`
    (and staging folders a crash left behind); how many folders went."""
    settings = settings or get_settings()
    root = settings.outbox_dir()
    if not root.is_dir():
        return 0
    limit = now - timedelta(days=settings.rights_outbox_days)
    purged = 0
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        stamp = folder / "written_at"
        try:
            written = datetime.fromisoformat(stamp.read_text().strip())
        except (OSError, ValueError):
            written = None  # a staging folder of a crashed write, or a damaged one: gone too
        if written is None or written < limit:
            shutil.rmtree(folder, ignore_errors=True)
            purged += 1
    return purged


# deadlines ------------------------------------------------------------------------------------
def mark_deadlines(today: date) -> tuple[Counter[str], list[tuple[uuid.UUID, str, date]]]:
    """Every open request's urgency (on time, due soon, overdue) as of `today`; the counts
    and the requests needing attention (id, urgency, due), audited."""
    counts: Counter[str] = Counter()
    flagged = []
    with transaction() as session:
        rows = session.exec(
            select(RightsRequest, DataSubject.pseudonym)
            .join(DataSubject, col(DataSubject.id) == col(RightsRequest.subject_id))
            .where(RightsRequest.status == RequestStatus.open)
        ).all()
        events = []
        for request, pseudonym in rows:
            request.urgency = urgency(request.due, today)
            counts[str(request.urgency)] += 1
            if request.urgency != Urgency.on_time:
                flagged.append((request.id, str(request.urgency), request.due))
                detail = f"request={request.id} right={request.right} due={request.due}"
                events.append(decision("rights.deadline", request.urgency, None, pseudonym, detail))
        write_audit(session, events)
    return counts, sorted(flagged, key=lambda f: f[2])


# the officer's form ---------------------------------------------------------------------------
def _parse_date(text: str, what: str) -> date | None:
    text = text.strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} is not a date (1980-05-17)") from None


def _changes(fields: Mapping[str, str], now: datetime) -> dict[str, Any] | None:
    """The form's new values, validated as an intake line's (ValueError naming the field)."""
    raw = {
        "email": fields["new_email"].strip() or None,
        "first_name": fields["new_first_name"].strip() or None,
        "last_name": fields["new_last_name"].strip() or None,
        "phone": fields["new_phone"].strip() or None,
        "birth_date": _parse_date(fields["new_birth_date"], "new_birth_date"),
    }
    given = {k: v for k, v in raw.items() if v is not None}
    if not given:
        return None
    try:
        return Changes.model_validate(given, context={"now": now}).values()
    except ValidationError as exc:  # its text may quote the value: only the fields are named
        names = sorted({str(e["loc"][0]) for e in exc.errors(include_input=False) if e.get("loc")}) or sorted(given)
        raise ValueError(f"new value(s) not valid: {', '.join('new_' + n for n in names)}") from None


def _form_fields(text: Mapping[str, str], now: datetime) -> dict[str, Any]:
    """The form's text, parsed into ``open_request``'s arguments (ValueError naming the
    field, never its value)."""
    try:
        right = Right(text["right"].strip())
    except ValueError:
        raise ValueError(f"right must be one of {', '.join(r.value for r in Right)}") from None
    return {
        "right": right,
        "email": text["email"].strip() or None,
        "insurance_number": text["insurance_number"].strip() or None,
        "subject_id": form.parse_uuid(text["subject_id"], "subject_id"),
        "received_at": form.parse_received_at(text["received_at"], now),
        "channel": form.parse_channel(text["channel"]),
        "reference": text["reference"],
        "changes": _changes(text, now),
    }


FORM_FIELDS = (
    "right",
    "email",
    "insurance_number",
    "subject_id",
    "received_at",
    "channel",
    "reference",
    "new_email",
    "new_first_name",
    "new_last_name",
    "new_phone",
    "new_birth_date",
)


def _open_from_form(parameters: Mapping[str, Any]) -> uuid.UUID:
    """Open (or join) the request a stored run was filed for: ``form.tidy_stale_runs``."""
    text = {name: form.as_text(parameters.get(name)) for name in FORM_FIELDS}
    text["channel"] = text["channel"] or Channel.email.value
    text["right"] = text["right"] or Right.access.value
    with transaction() as session:
        return open_request(session, **_form_fields(text, utcnow())).id


RIGHTS = [r.value for r in Right]


@flow(name=FORM_FLOW, **NO_RESULTS)
@one_line_failure
def handle_rights_request(
    right: Annotated[Text, form.field("Recht / right", enum=RIGHTS)] = Right.access.value,
    email: Annotated[Text, form.field("E-Mail-Adresse / e-mail address", maxLength=254)] = "",
    insurance_number: Annotated[
        Text,
        form.field("Krankenversichertennummer / health-insurance number", maxLength=20, pattern=form.INSURANCE_PATTERN),
    ] = "",
    subject_id: Annotated[Text, form.field("Personen-ID / subject id", pattern=form.UUID_PATTERN)] = "",
    received_at: Annotated[
        Text,
        form.field("Eingegangen am (Berlin) / received (Berlin time)", maxLength=40, pattern=form.RECEIVED_PATTERN),
    ] = "",
    channel: Annotated[Text, form.field("Eingangsweg / channel", enum=form.CHANNELS)] = Channel.email.value,
    reference: Annotated[Text, form.field("Aktenzeichen / reference", maxLength=MAX_TEXT)] = "",
    new_email: Annotated[Text, form.field("Neue E-Mail-Adresse / new e-mail address", maxLength=254)] = "",
    new_first_name: Annotated[Text, form.field("Neuer Vorname / new first name", maxLength=200)] = "",
    new_last_name: Annotated[Text, form.field("Neuer Nachname / new last name", maxLength=200)] = "",
    new_phone: Annotated[Text, form.field("Neue Telefonnummer / new phone number", maxLength=40)] = "",
    new_birth_date: Annotated[
        Text, form.field("Neues Geburtsdatum / new birth date", maxLength=10, pattern=r"^$|^\d{4}-\d{2}-\d{2}$")
    ] = "",
    request_id: Annotated[
        Text, form.field("Nur zum Fortsetzen: Antrags-ID / resume only: request id", pattern=form.UUID_PATTERN)
    ] = "",
) -> dict[str, int]:
    """Answer a data subject's request: access (Art. 15), portability (Art. 20),
    rectification (Art. 16), restriction (Art. 18) or objection (Art. 21).

    Give the subject by e-mail address, insurance number and/or our subject id (all must
    point at the same person), or resume a request by its id. Access and portability write
    their package, encrypted, to the rights outbox (`psync request show <id>` opens it).
    Whatever the outcome, everything typed in is blanked from this run's stored parameters
    and the request id put in their place, so a retry of the run resumes it.

    Args:
        right: Which right the person exercises: access, portability, rectification, restriction or objection.
        email: The person's e-mail address, at most 254 characters. Give at least one of e-mail, insurance number, subject id (all must be the same person).
        insurance_number: Krankenversichertennummer: a capital letter and 9 digits, e.g. A123456780 (spaces allowed). Give at least one of e-mail, insurance number, subject id (all must be the same person).
        subject_id: Our id of the person (8-4-4-4-12 hex digits), as in the audit trail or a report. Give at least one of e-mail, insurance number, subject id (all must be the same person).
        received_at: When the request reached us, Berlin time: 2026-11-20 or 2026-11-20 14:30 (empty: now); the one-month deadline counts from it.
        channel: How the request reached us: letter, email, portal, phone or intake.
        reference: File number or short note, at most 200 characters; no names, e-mails, long numbers.
        new_email: Rectification only: the corrected e-mail address (empty: unchanged).
        new_first_name: Rectification only: the corrected first name (empty: unchanged).
        new_last_name: Rectification only: the corrected last name (empty: unchanged).
        new_phone: Rectification only: the corrected phone number, e.g. 030 901820 (empty: unchanged).
        new_birth_date: Rectification only: the corrected birth date as 1980-05-17 (empty: unchanged).
        request_id: Leave empty for a new request. Only to resume an open request: its id (then leave the identifiers empty).
    """
    logger = get_run_logger()
    rid: uuid.UUID | None = None
    typed = {
        "right": right,
        "email": email,
        "insurance_number": insurance_number,
        "subject_id": subject_id,
        "received_at": received_at,
        "channel": channel,
        "reference": reference,
        "new_email": new_email,
        "new_first_name": new_first_name,
        "new_last_name": new_last_name,
        "new_phone": new_phone,
        "new_birth_date": new_birth_date,
    }
    try:
        rid = form.parse_uuid(request_id, "request_id")
        with transaction() as session:
            if rid is None:
                rid = open_request(session, **_form_fields(typed, utcnow())).id
            else:
                get_request(session, rid)  # LookupError for an unknown id
    finally:  # opened, resumed or refused: nothing typed in is kept with the run
        form.forget(rid, PERSONAL)
    counts = handle([rid])
    with transaction() as session:
        request = get_request(session, rid)
        status, detail = request.status, request.detail
    counts_artifact("handle-rights-request", "Betroffenenantrag / Data-subject request", counts)
    logger.info("rights request %s: %s", rid, dict(counts))
    if status != RequestStatus.completed:
        raise JobFailed(
            f"rights request {rid} not answered yet: {detail or 'claimed by another run'}; "
            "follow-up-rights-requests tries again"
        )
    return dict(counts)


@flow(name="follow-up-rights-requests", **NO_RESULTS)
@one_line_failure
def follow_up_rights_requests(as_of: date | None = None) -> dict[str, int]:
    """Answer every open data-subject request (from the website's intake, or not answered
    yet), delete outbox packages older than PSYNC_RIGHTS_OUTBOX_DAYS, and mark deadlines.

    First, handle-rights-request runs that still hold what was typed into the form
    (scheduled for later, cancelled, crashed) are tidied: their request is opened and they
    keep only its id (a cancelled one is only blanked). Fails, naming request ids only, when
    an open request is due within 5 days or overdue (Art. 12(3)).

    Args:
        as_of: The Berlin calendar day to judge the deadlines by (empty: today).
    """
    logger = get_run_logger()
    now = utcnow()
    today = as_of or berlin_today(now)
    tidied = form.tidy_stale_runs(_open_from_form, FORM_FLOW, PERSONAL)
    if any(tidied.values()):
        logger.info("rights form runs tidied: %s", tidied)
    counts = handle()
    counts["outbox_purged"] = purge_outbox(now)
    urgencies, flagged = mark_deadlines(today)
    counts.update(urgencies)
    logger.info("follow-up: %s", dict(counts))
    counts_artifact("follow-up-rights-requests", "Betroffenenanträge / Data-subject requests", counts)
    if flagged:
        names = ", ".join(f"{rid} ({kind}, due {due})" for rid, kind, due in flagged)
        logger.error("rights requests needing attention: %s", names)
        raise JobFailed(f"{len(flagged)} rights request(s) due within 5 days or overdue: {names}")
    return dict(counts)


# The handlers register themselves on import (at the end: they import this module).
from flows import access, amend  # noqa: E402, F401  (access, portability; rectification, restriction, objection)
