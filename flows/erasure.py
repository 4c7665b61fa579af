"""Erasure requests fanned out to every processor, verified, on time, with an Art. 19 report.

Three flows:

- ``fan-out-erasure``: opens the request (or resumes one by id), then asks every processor
  that holds the subject's data to erase it, all processors at once (one Prefect task per
  processor on the thread-pool task runner: a slow or failing one holds nobody back), each
  through its connector's retry policy; reads back what was erased; once every recipient is
  verified, erases the controller's own copy last and completes the request. Writes the
  Art. 19 report as a table artifact.
- ``follow-up-erasures`` (scheduled): the same work for every open request: asynchronous
  deletions read back, failed ones asked again, restricted ones erased once their hold is
  over, requests completed.
- ``watch-erasure-deadlines`` (daily): marks each open request on time, due soon (5 days)
  or overdue, and fails the run naming the request ids when any needs attention.

A run claims the tasks it works (``models.erasure.claim``) before calling anyone, so two runs
at once never ask a processor twice; what a run completed is never repeated. Every call and
decision goes to the audit trail under the subject's pseudonym; logs, exceptions,
artifacts and run names carry request ids and counts only, and the identifiers typed into
the run form are replaced by the request id as soon as the request is open.

For the officer (the CLI): ``open_erasure_request``, ``report`` and ``render_markdown``,
``manual_requests``, ``confirm_manual``, ``extend_request``.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from sqlmodel import Session, col, select

from connectors.transport import ProcessorError, redact
from core import catalogue
from core.clock import berlin_today
from core.settings import get_settings
from flows import erasure_form as form
from flows import journal
from flows.common import (
    NO_RESULTS,
    JobFailed,
    call_events,
    counts_artifact,
    decision,
    one_line_failure,
    overlapped,
    run_id,
    write_audit,
)
from flows.erasure_form import Text
from flows.erasure_processors import (
    AWAITING,
    VERIFIED,
    Clients,
    NotVerified,
    Policy,
    SubjectRef,
    Target,
    TaskRef,
    handler_for,
    hold_for,
    manual_request_text,
    policy_from_settings,
    reminder_due,
)
from models.audit import AuditEvent
from models.cursors import await_deliveries
from models.db import scrub_journal, transaction
from models.deadlines import urgency
from models.erasure import (
    MAX_EVIDENCE,
    MAX_TEXT,
    Channel,
    ErasureRequest,
    ErasureTask,
    RequestStatus,
    TaskState,
    Urgency,
    check_free_text,
    claim,
    erase_controller_copy,
    extend,
    get_by_id,
    get_request,
    held_by,
    is_done,
    local_records,
    open_request,
    release,
    sync_tasks,
    tasks_of,
    waiting_lawfully,
)
from models.recipients import Recipient, record_removed
from models.subjects import DataSubject
from models.types import berlin_text, utcnow

ACTION = "erasure"


def _pseudonyms(session: Session, request_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """request id → the subject's pseudonym (what the audit trail names)."""
    rows = session.exec(
        select(ErasureRequest.id, DataSubject.pseudonym)
        .join(DataSubject, col(DataSubject.id) == col(ErasureRequest.subject_id))
        .where(col(ErasureRequest.id).in_(list(request_ids)))
    )
    return dict(rows.all())


# opening --------------------------------------------------------------------------------
def open_erasure_request(
    session: Session,
    *,
    email: str | None = None,
    insurance_number: str | None = None,
    subject_id: uuid.UUID | str | None = None,
    received_at: datetime | None = None,
    channel: str = Channel.email,
    reference: str = "",
    now: datetime | None = None,
) -> ErasureRequest:
    """``models.erasure.open_request`` plus its audit row; the CLI and intake call this.

    Opening the request here and starting ``fan-out-erasure`` with its id keeps the e-mail
    address out of Prefect's stored flow-run parameters.
    """
    now = now or utcnow()
    settings = get_settings()
    request = open_request(
        session,
        email=email,
        insurance_number=insurance_number,
        subject_id=subject_id,
        received_at=received_at or now,
        channel=channel,
        reference=reference,
        key=settings.hmac_key(),
        now=now,
    )
    existing_before = request.created_at < now
    tasks = tasks_of(session, request.id)
    pseudonym = _pseudonyms(session, [request.id])[request.id]
    write_audit(
        session,
        [
            decision(
                "erasure.open",
                "joined" if existing_before else "opened",
                None,
                pseudonym,
                f"request={request.id} channel={request.channel} recipients={len(tasks)} due={request.due}",
            )
        ],
    )
    return request


# claiming and deciding -----------------------------------------------------------------
@dataclass(frozen=True)
class Claimed:
    owner: str
    by_processor: dict[str, list[uuid.UUID]]
    request_ids: list[uuid.UUID]
    counts: dict[str, int]


def claim_work(request_ids: Sequence[uuid.UUID] | None, policy: Policy, today: date, now: datetime) -> Claimed:
    """Claim the workable tasks and decide what needs no call: holds and manual processors.

    One transaction: the register is looked at again (data sent since the request opened
    is erased too), tasks are claimed, held ones become restricted, those without an API
    manual; the rest are left claimed for the processors' tasks, state ``requested``
    (or ``awaiting_processor``: only read back).
    """
    owner = f"{run_id() or 'local'}/{uuid.uuid4().hex[:12]}"
    counts: Counter[str] = Counter()
    by_processor: dict[str, list[uuid.UUID]] = defaultdict(list)
    with transaction() as session:
        scope = select(ErasureRequest).where(ErasureRequest.status == RequestStatus.open)
        if request_ids is not None:
            scope = scope.where(col(ErasureRequest.id).in_(list(request_ids)))
        requests = list(session.exec(scope))
        open_ids = [r.id for r in requests]
        for request in requests:
            sync_tasks(session, request, now)
        ids = claim(session, owner, now, today, policy.lease, open_ids if request_ids is not None else None)
        query = select(ErasureTask).where(col(ErasureTask.id).in_(ids))
        tasks = list(session.exec(query)) if ids else []
        pseudonyms = _pseudonyms(session, {t.request_id for t in tasks})
        events: list[AuditEvent] = []
        for item in sorted(tasks, key=lambda t: (t.request_id, t.processor, t.purpose)):
            pseudonym = pseudonyms[item.request_id]
            detail = f"request={item.request_id} purpose={item.purpose}"
            item.updated_at = now
            # A deletion the processor already accepted is not held back any more.
            asked = item.state == TaskState.awaiting_processor
            hold = None if asked else hold_for(session, item, policy, today)
            if hold is not None:
                item.state, (item.hold_reason, item.hold_until) = TaskState.restricted, hold
                release(item)
                counts[TaskState.restricted.value] += 1
                events.append(
                    decision("erasure.hold", "restricted", item.processor, pseudonym, f"{detail} until={hold[1]}")
                )
            elif handler_for(item.processor, policy) is None:
                events.append(decision("erasure.manual", "manual_pending", item.processor, pseudonym, detail))
                item.state, item.detail = TaskState.manual_pending, "send the generated request; confirm with evidence"
                # From now on the text is there to send: reminders count from here.
                item.requested_at = item.requested_at or now
                release(item)
                counts[TaskState.manual_pending.value] += 1
            else:
                if not asked:
                    item.state = TaskState.requested
                by_processor[item.processor].append(item.id)
        write_audit(session, events)
    return Claimed(owner, dict(by_processor), open_ids, dict(counts))


# asking the processors ------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    state: str  # a TaskState
    asked: bool  # an erasure was requested in this attempt (not only read back)
    http_status: int | None = None
    detail: str = ""


def _attempt(eraser: Any, clients: Clients, target: Target, ref: TaskRef, now: datetime, policy: Policy) -> Outcome:
    """Erase, or only read back an accepted deletion; what happened, never raising for the
    processor's failures (they are this task's outcome, not the run's)."""
    asked = False
    try:
        client = clients.get(ref.processor)  # a configuration failure is this task's outcome
        if ref.state == TaskState.awaiting_processor:
            if eraser.verify(client, target):
                return Outcome(TaskState.verified, False)
            stale = ref.requested_at is None or now - ref.requested_at > policy.reissue_after
            if eraser.asynchronous and not stale:
                return Outcome(TaskState.awaiting_processor, False)
        asked = True
        result = eraser.erase(client, target)
        if result == AWAITING and eraser.verify(client, target):
            result = VERIFIED
        state = TaskState.verified if result == VERIFIED else TaskState.awaiting_processor
        return Outcome(state, asked)
    except ProcessorError as exc:
        what = f"HTTP {exc.status}" if exc.status is not None else (exc.reason or "no answer")
        detail = f"{exc.operation}: {what} after {exc.attempts} attempt(s)"
        return Outcome(TaskState.failed, asked, exc.status, detail)
    except NotVerified:
        return Outcome(TaskState.failed, asked, None, "deleted, but still there when read back")
    except ValueError as exc:
        # Our own configuration and purpose checks; their messages name settings, not people
        # (redacted all the same: this text is stored and audited).
        return Outcome(TaskState.failed, asked, None, f"not possible: {redact(str(exc))[:150]}")
    except Exception as exc:  # noqa: BLE001 - one task's bug must not stop the others
        # The type only: an unexpected message may quote what the processor answered.
        get_run_logger().error("%s: unexpected %s in task %s", ref.processor, type(exc).__name__, ref.id)
        return Outcome(TaskState.failed, asked, None, f"unexpected {type(exc).__name__}")


def _load(
    task_ids: Sequence[uuid.UUID], owner: str, settings: Any
) -> dict[uuid.UUID, tuple[TaskRef, SubjectRef, Target]]:
    """Snapshots of the tasks this owner still holds, with their subjects and what their
    erasers need (the controller's records the catalogue's purpose names), in one read."""
    with transaction() as session:
        rows = session.exec(
            select(ErasureTask, DataSubject)
            .join(ErasureRequest, col(ErasureRequest.id) == col(ErasureTask.request_id))
            .join(DataSubject, col(DataSubject.id) == col(ErasureRequest.subject_id))
            .where(col(ErasureTask.id).in_(list(task_ids)), ErasureTask.claimed_by == owner)
        ).all()
        loaded = {}
        for item, subject in rows:
            ref, who = TaskRef.of(item), SubjectRef.of(subject)
            purpose = catalogue.purpose_of(item.processor, item.purpose)
            local = local_records(session, purpose.local if purpose else None, subject.id, item.purpose)
            loaded[item.id] = (ref, who, ref.target(who, settings, local))
        return loaded


def _record(
    task_id: uuid.UUID,
    owner: str,
    outcome: Outcome,
    pseudonym: str,
    clients: Clients,
    processor: str,
    started: datetime,
) -> bool:
    """Write the outcome, the register and the audit rows; False when the claim was lost."""
    now = utcnow()
    with transaction() as session:
        events = call_events(clients.drain_calls(processor))
        item = session.get(ErasureTask, task_id)
        if item is None or not held_by(item, owner):
            write_audit(
                session, [*events, decision("erasure.erase", "claim_lost", processor, pseudonym, f"task={task_id}")]
            )
            return False
        item.state, item.updated_at = outcome.state, now
        if outcome.asked:
            item.attempts += 1
            item.requested_at = started
        item.last_http_status = outcome.http_status
        item.detail = outcome.detail
        if outcome.state == TaskState.verified:
            item.verified_at, item.verified_by = now, "read_back"
            _register_removed(session, item, now)
        release(item)
        action = "erase" if outcome.asked else "verify"
        words: dict[str, str] = {  # keyed by TaskState, a StrEnum: outcome.state is its str value
            TaskState.verified: "verified",
            TaskState.awaiting_processor: "awaiting",
            TaskState.failed: "failed",
        }
        outcome_word = words[outcome.state]
        events.append(
            decision(
                f"{ACTION}.{action}",
                outcome_word,
                processor,
                pseudonym,
                f"request={item.request_id} purpose={item.purpose}" + (f" {outcome.detail}" if outcome.detail else ""),
                outcome.http_status,
            )
        )
        write_audit(session, events)
    return True


def _register_removed(session: Session, item: ErasureTask, now: datetime) -> None:
    row = session.get(Recipient, item.recipient_id) if item.recipient_id else None
    if row is not None:
        record_removed(row, now)


@task(name="erase-at-processor", task_run_name="erase-at-{processor}", cache_policy=NO_CACHE)
@one_line_failure
def erase_at_processor(
    processor: str, task_ids: list[uuid.UUID], owner: str, clients: Clients, policy: Policy
) -> dict[str, int]:
    """Ask one processor to erase, and read back: one person's tasks one after the other,
    up to ``PSYNC_HTTP_IN_FLIGHT`` people at once, at the processor's rate (its one token
    bucket in the HTTP layer).

    Takes ids only; each outcome commits on its own, so what is done stays done if a later
    task of the batch fails.
    """
    eraser = handler_for(processor, policy)
    assert eraser is not None, "claim_work hands only processors with an eraser to this task"
    counts: Counter[str] = Counter()
    snapshots = _load(task_ids, owner, clients.settings)
    if lost := sum(1 for task_id in task_ids if task_id not in snapshots):
        counts["claim_lost"] = lost
    # One person's tasks here one after the other on one worker, several people at once:
    # the processor's token bucket paces the calls, the outcomes are recorded on this thread
    # as they come (each its own transaction; SQLite has one writer).
    chains: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for task_id in task_ids:
        if task_id in snapshots:
            chains[snapshots[task_id][1].id].append(task_id)

    def attempt(chain: list[uuid.UUID]) -> list[tuple[uuid.UUID, Outcome, datetime]]:
        done = []
        for task_id in chain:
            ref, _, target = snapshots[task_id]
            started = utcnow()
            done.append((task_id, _attempt(eraser, clients, target, ref, started, policy), started))
        return done

    with overlapped((partial(attempt, chain) for chain in chains.values()), least=1) as answers:
        for done in answers:
            for task_id, outcome, started in done:
                pseudonym = snapshots[task_id][1].pseudonym
                if _record(task_id, owner, outcome, pseudonym, clients, processor, started):
                    counts[str(outcome.state)] += 1
                else:
                    counts["claim_lost"] += 1
    get_run_logger().info("%s: %s", processor, dict(counts))
    return dict(counts)


# finishing ------------------------------------------------------------------------------
def finish_request(session: Session, request: ErasureRequest, now: datetime) -> bool:
    """Erase the controller's copy and complete the request once every recipient is verified.

    Locks the request row (PostgreSQL), so two runs finishing at once complete it once.
    Returns True when the request is (now) completed.
    """
    locked = session.exec(select(ErasureRequest).where(ErasureRequest.id == request.id).with_for_update()).one()
    if locked.status == RequestStatus.completed:
        return True
    tasks = tasks_of(session, locked.id)
    if not is_done(tasks):
        return False
    pseudonym = _pseudonyms(session, [locked.id])[locked.id]
    counts = erase_controller_copy(session, locked.subject_id, now)
    # What was handed to the person (access packages, letters, proofs) goes from disk too.
    from flows.rights import forget_outbox  # (flows.rights loads every right's module)

    outbox = forget_outbox(session, locked.subject_id, pseudonym)
    locked.controller_erased_at = now
    locked.status, locked.completed_at = RequestStatus.completed, now
    locked.urgency = urgency(locked.due, berlin_today(now))
    kinds = " ".join([*(f"{k}={v}" for k, v in sorted(counts.items())), f"outbox_folders={outbox}"])
    write_audit(
        session,
        [
            decision("erasure.controller", "erased", None, pseudonym, f"request={locked.id} {kinds}"),
            decision("erasure.complete", "completed", None, pseudonym, f"request={locked.id} recipients={len(tasks)}"),
        ],
    )
    return True


def _finish(request_ids: Sequence[uuid.UUID], now: datetime) -> list[uuid.UUID]:
    """Finish every given open request that is done, each in its own transaction."""
    completed = []
    for request_id in request_ids:
        with transaction() as session:
            request = session.get(ErasureRequest, request_id)
            if request is None or request.status != RequestStatus.open:
                continue
            if finish_request(session, request, now):
                completed.append(request_id)
    if completed:  # the erased values' old page versions must not stay in SQLite's WAL
        scrub_journal()
    return completed


def _run(request_ids: Sequence[uuid.UUID] | None, today: date) -> tuple[Counter[str], list[uuid.UUID], list[uuid.UUID]]:
    """Claim, ask every processor at once, finish; counts, requests looked at, completed."""
    settings = get_settings()
    policy = policy_from_settings(settings)
    # A push that took its cursor before a request opened may still be landing the person's
    # data: it ends before the register is read and anyone is asked (PostgreSQL).
    await_deliveries()
    claimed = claim_work(request_ids, policy, today, utcnow())
    counts: Counter[str] = Counter(claimed.counts)
    clients = Clients(settings)
    futures = {
        processor: erase_at_processor.submit(processor, ids, claimed.owner, clients, policy)
        for processor, ids in sorted(claimed.by_processor.items())
    }
    crashed = []
    for processor, future in futures.items():
        try:
            counts.update(future.result())
        except Exception:  # noqa: BLE001 - the others' outcomes still count; raised below
            crashed.append(processor)
    completed = _finish(claimed.request_ids, utcnow())
    counts["completed"] += len(completed)
    if crashed:
        # Its tasks stay claimed until the lease runs out, then the follow-up takes them.
        raise JobFailed(f"erasure at {', '.join(crashed)} crashed; see the task run")
    return counts, claimed.request_ids, completed


# the flows ------------------------------------------------------------------------------
@flow(name="fan-out-erasure", **NO_RESULTS, task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]  # Prefect's generics: ThreadPoolTaskRunner() is inferred as [Never]
@one_line_failure
def fan_out_erasure(
    email: Annotated[Text, form.field("E-Mail-Adresse / e-mail address", maxLength=254)] = "",
    insurance_number: Annotated[
        Text,
        form.field(
            "Krankenversichertennummer / health-insurance number",
            maxLength=20,
            pattern=form.INSURANCE_PATTERN,
        ),
    ] = "",
    subject_id: Annotated[Text, form.field("Personen-ID / subject id", pattern=form.UUID_PATTERN)] = "",
    received_at: Annotated[
        Text,
        form.field(
            "Eingegangen am (Berlin) / received (Berlin time)",
            maxLength=40,
            pattern=form.RECEIVED_PATTERN,
        ),
    ] = "",
    channel: Annotated[Text, form.field("Eingangsweg / channel", enum=form.CHANNELS)] = Channel.email.value,
    reference: Annotated[Text, form.field("Aktenzeichen / reference", maxLength=MAX_TEXT)] = "",
    request_id: Annotated[
        Text,
        form.field(
            "Nur zum Fortsetzen: Antrags-ID / resume only: request id",
            pattern=form.UUID_PATTERN,
        ),
    ] = "",
) -> dict[str, int]:
    """Erase a data subject's data at every processor, verified, then here; Art. 19 report.

    Give the subject by e-mail address, insurance number and/or our subject id (all must
    point at the same person), or resume a request by its id. Every processor is asked at
    once; an asynchronous deletion is read back later by `follow-up-erasures`. The request
    completes, and our own copy is erased, once every recipient is verified. Whatever the
    outcome, the identifiers and the reference are blanked from this run's stored
    parameters and the request id put in their place, so a retry of the run resumes it.

    Args:
        email: The person's e-mail address, at most 254 characters. Give at least one of e-mail, insurance number, subject id (all must be the same person).
        insurance_number: Krankenversichertennummer: a capital letter and 9 digits, e.g. A123456780 (spaces allowed). Give at least one of e-mail, insurance number, subject id (all must be the same person).
        subject_id: Our id of the person (8-4-4-4-12 hex digits), as in the audit trail or a report. Give at least one of e-mail, insurance number, subject id (all must be the same person).
        received_at: When the request reached us, Berlin time: 2026-11-20 or 2026-11-20 14:30 (empty: now); the one-month deadline counts from it.
        channel: How the request reached us: letter, email, portal, phone or intake.
        reference: File number or short note, at most 200 characters; no names, e-mails, long numbers.
        request_id: Leave empty for a new request. Only to resume an open request: its id (then leave the identifiers empty).
    """
    logger = get_run_logger()
    rid: uuid.UUID | None = None
    try:
        rid = form.parse_uuid(request_id, "request_id")
        with transaction() as session:
            if rid is None:
                rid = open_erasure_request(
                    session,
                    **_request_fields(
                        email=email,
                        insurance_number=insurance_number,
                        subject_id=subject_id,
                        received_at=received_at,
                        channel=channel,
                        reference=reference,
                    ),
                ).id
            else:
                get_request(session, rid)  # LookupError for an unknown id
    finally:  # opened, resumed or refused: nothing typed in is kept with the run
        form.forget(rid)
    counts, _, _ = _run([rid], berlin_today(utcnow()))
    logger.info("erasure request %s: %s", rid, dict(counts))
    with transaction() as session:
        publish_report(session, rid)
        failed = [t for t in tasks_of(session, rid) if t.state == TaskState.failed]
    if failed:
        # Visible in the UI; the request stays open and the follow-up asks again.
        where = "; ".join(f"{t.processor} ({t.detail or 'failed'})" for t in failed)
        raise JobFailed(
            f"erasure request {rid}: {len(failed)} processor erasure(s) failed: {where}; "
            "the request stays open and follow-up-erasures tries again"
        )
    return dict(counts)


def _request_fields(
    *, email: str, insurance_number: str, subject_id: str, received_at: str, channel: str, reference: str
) -> dict[str, Any]:
    """The form's text, parsed into ``open_erasure_request``'s arguments (ValueError naming
    the field, never its value)."""
    return {
        "email": email.strip() or None,
        "insurance_number": insurance_number.strip() or None,
        "subject_id": form.parse_uuid(subject_id, "subject_id"),
        "received_at": form.parse_received_at(received_at, utcnow()),
        "channel": form.parse_channel(channel),
        "reference": reference,
    }


def _open_from_form(parameters: Mapping[str, Any]) -> uuid.UUID:
    """Open (or join) the request a stored run was filed for: ``form.tidy_stale_runs``."""
    fields = ("email", "insurance_number", "subject_id", "received_at", "channel", "reference")
    text = {name: form.as_text(parameters.get(name)) for name in fields}
    text["channel"] = text["channel"] or Channel.email.value
    with transaction() as session:
        return open_erasure_request(session, **_request_fields(**text)).id


@flow(name="follow-up-erasures", **NO_RESULTS, task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]  # Prefect's generics: ThreadPoolTaskRunner() is inferred as [Never]
@one_line_failure
def follow_up_erasures(as_of: date | None = None) -> dict[str, int]:
    """Carry every open erasure request forward: read back asynchronous deletions, ask again
    where a call failed, erase restricted data once its hold is over, complete requests.

    First, fan-out-erasure runs that still hold what was typed into the form (scheduled for
    later, cancelled, crashed) are tidied: their request is opened and they keep only its id
    (a cancelled one is only blanked).

    Args:
        as_of: The Berlin calendar day to judge legal holds by (empty: today).
    """
    today = as_of or berlin_today(utcnow())
    logger = get_run_logger()
    journal.settle_now()  # calls of delivery batches killed before their commit, if no batch ran since
    tidied = form.tidy_stale_runs(_open_from_form)
    if any(tidied.values()):
        logger.info("erasure form runs tidied: %s", tidied)
    counts, _, completed = _run(None, today)
    with transaction() as session:
        for request_id in completed:
            publish_report(session, request_id)
    reminded = remind_manual(today, utcnow())
    if reminded:
        counts["manual_reminders"] = len(reminded)
        # Request ids only; the reminder's text (it holds the address) is for the officer.
        logger.warning(
            "%d manual erasure(s) unconfirmed: send the reminder (psync erasure status <id>): %s",
            len(reminded),
            ", ".join(sorted({str(r) for r in reminded})),
        )
    logger.info("follow-up: %s", dict(counts))
    if counts.get(TaskState.failed):
        logger.warning("%d processor erasure(s) failed; asked again on the next run", counts[TaskState.failed])
    counts_artifact("follow-up-erasures", "Nachverfolgung der Löschanträge / Erasure follow-up", counts)
    return dict(counts)


@flow(name="watch-erasure-deadlines", **NO_RESULTS)
@one_line_failure
def watch_erasure_deadlines(as_of: date | None = None) -> dict[str, int]:
    """Mark every open erasure request on time, due soon (within 5 days) or overdue
    (Art. 12(3)); fail the run, naming the request ids, when any needs attention.

    A request that is open only because of a legal hold has been answered (restricted, with
    the date the hold ends) and is not raised.

    Args:
        as_of: The Berlin calendar day to judge the deadlines by (empty: today).
    """
    today = as_of or berlin_today(utcnow())
    counts: Counter[str] = Counter()
    flagged: list[tuple[uuid.UUID, str, date]] = []
    with transaction() as session:
        query = select(ErasureRequest).where(ErasureRequest.status == RequestStatus.open)
        requests = list(session.exec(query))
        pseudonyms = _pseudonyms(session, [r.id for r in requests])
        events = []
        for request in requests:
            request.urgency = urgency(request.due, today)
            counts[str(request.urgency)] += 1
            if request.urgency == Urgency.on_time:
                continue
            if waiting_lawfully(tasks_of(session, request.id)):
                counts["held_lawfully"] += 1
                continue
            flagged.append((request.id, request.urgency, request.due))
            events.append(
                decision(
                    "erasure.deadline",
                    request.urgency,
                    None,
                    pseudonyms[request.id],
                    f"request={request.id} due={request.due}",
                )
            )
        write_audit(session, events)
    counts_artifact("watch-erasure-deadlines", "Löschanträge nach Dringlichkeit / Erasure requests by urgency", counts)
    if flagged:
        flagged.sort(key=lambda f: f[2])
        names = ", ".join(f"{rid} ({kind}, due {due})" for rid, kind, due in flagged)
        get_run_logger().error("erasure requests needing attention: %s", names)
        raise JobFailed(f"{len(flagged)} erasure request(s) due within 5 days or overdue: {names}")
    return dict(counts)


# for the officer ------------------------------------------------------------------------
def _verification(item: ErasureTask) -> str:
    if item.state == TaskState.verified:
        if item.verified_by == "manual":
            return f"manual: {item.evidence}"
        return "read back: absent (404)"
    if item.state == TaskState.restricted:
        return f"restricted until {item.hold_until}: {item.hold_reason}"
    if item.state == TaskState.awaiting_processor:
        return "deletion accepted by the processor; read back pending"
    if item.state == TaskState.manual_pending:
        return "manual request to be sent and confirmed"
    if item.state == TaskState.failed:
        return f"failed, will be retried: {item.detail}"
    if item.state == TaskState.requested:
        return "erasure being requested"
    return "not yet requested"


def _iso(value: datetime | date | None) -> str | None:
    return value.isoformat() if value is not None else None


def report(session: Session, request_id: uuid.UUID | str) -> dict:
    """The Art. 19 report of a request, JSON-able: every recipient, what was done there and
    when, how it was verified. Nothing personal (ids, processors, dates)."""
    request = get_request(session, request_id)
    return {
        "request_id": str(request.id),
        "received_at": _iso(request.received_at),
        "channel": request.channel,
        "reference": request.reference,
        "status": request.status,
        "due": _iso(request.due),
        "extension_months": request.extension_months,
        "extension_reason": request.extension_reason,
        "subject_informed_on": _iso(request.subject_informed_on),
        "urgency": request.urgency,
        "controller_erased_at": _iso(request.controller_erased_at),
        "completed_at": _iso(request.completed_at),
        "recipients": [
            {
                "task_id": str(item.id),
                "processor": item.processor,
                "purpose": item.purpose,
                "state": item.state,
                "requested_at": _iso(item.requested_at),
                "verified_at": _iso(item.verified_at),
                "verification": _verification(item),
            }
            for item in tasks_of(session, request.id)
        ],
    }


# What the officer reads: German first, English after the slash.
CHANNEL_LABELS = {
    "letter": "Brief / letter",
    "email": "E-Mail / e-mail",
    "portal": "Portal / portal",
    "phone": "Telefon / phone",
    "intake": "Website (Intake) / website (intake)",
}
STATE_LABELS = {
    TaskState.pending: "offen / pending",
    TaskState.requested: "angefragt / requested",
    TaskState.awaiting_processor: "vom Auftragsverarbeiter angenommen / accepted by the processor",
    TaskState.verified: "gelöscht und geprüft / erased and verified",
    TaskState.failed: "fehlgeschlagen, wird wiederholt / failed, will be retried",
    TaskState.restricted: "eingeschränkt (gesetzliche Aufbewahrung) / restricted (legal hold)",
    TaskState.manual_pending: "manuell anzufragen / to be requested by hand",
}
STATUS_LABELS = {RequestStatus.open: "offen / open", RequestStatus.completed: "abgeschlossen / completed"}


def _berlin(value: str | None) -> str:
    """An ISO time of the report as Berlin wall clock to the second."""
    return berlin_text(datetime.fromisoformat(value)) if value else "–"


def render_markdown(data: dict) -> str:
    """The report as Markdown, for the officer to send (``psync erasure report --format md``):
    times in Berlin to the second, states and channels in words (German / English)."""
    due = data["due"]
    if data["extension_months"]:
        due += (
            f" (verlängert um / extended by {data['extension_months']} Monat(e)/month(s): "
            f"{data['extension_reason']}; Person informiert am / subject informed on "
            f"{data['subject_informed_on']})"
        )
    status = STATUS_LABELS.get(data["status"], data["status"])
    if data["completed_at"]:
        status += f", {_berlin(data['completed_at'])}"
    erased = (
        _berlin(data["controller_erased_at"])
        if data["controller_erased_at"]
        else ("noch nicht (erst wenn jeder Empfänger bestätigt ist) / not yet (once every recipient is verified)")
    )
    lines = [
        f"# Löschantrag / Erasure request {data['request_id']}",
        "",
        f"- Eingegangen / received: {_berlin(data['received_at'])}",
        f"- Eingangsweg / channel: {CHANNEL_LABELS.get(data['channel'], data['channel'])}",
        f"- Aktenzeichen / reference: {data['reference'] or '–'}",
        f"- Frist / deadline (Art. 12(3)): {due}",
        f"- Stand / status: {status}",
        f"- Unsere eigene Kopie gelöscht / our own copy erased: {erased}",
        "",
        "## Empfänger / Recipients (Art. 19 DSGVO / GDPR)",
        "",
        (
            "| Empfänger / recipient | Zweck / purpose | Stand / state | angefragt / requested "
            "| bestätigt / verified | Nachweis / how verified |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for row in _recipient_rows(data):
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row.values()) + " |")
    return "\n".join(lines) + "\n"


def _recipient_rows(data: dict) -> list[dict[str, str]]:
    """The report's recipients as the officer reads them (Markdown and the artifact)."""
    rows = [
        {
            "Empfänger / recipient": row["processor"],
            "Zweck / purpose": row["purpose"],
            "Stand / state": STATE_LABELS.get(row["state"], row["state"]),
            "angefragt / requested": _berlin(row["requested_at"]),
            "bestätigt / verified": _berlin(row["verified_at"]),
            "Nachweis / how verified": row["verification"],
        }
        for row in data["recipients"]
    ]
    return rows or [
        {
            "Empfänger / recipient": "–",
            "Zweck / purpose": "–",
            "Stand / state": "–",
            "angefragt / requested": "–",
            "bestätigt / verified": "–",
            "Nachweis / how verified": "kein Auftragsverarbeiter hatte Daten der Person / no processor held data of this person",
        }
    ]


def publish_report(session: Session, request_id: uuid.UUID) -> None:
    """The report as a Prefect table artifact (keyed per request, so it keeps its history):
    the request's receipt, channel, reference and deadline above, one row per recipient.
    Nothing personal (ids, processors, dates; the reference was checked to hold none)."""
    data = report(session, request_id)
    header = render_markdown(data).split("## ", 1)[0]
    create_table_artifact(
        table=_recipient_rows(data),
        key=f"erasure-report-{data['request_id']}",
        description=f"{header}\nArt. 19 report; no personal data.",
    )


def manual_requests(session: Session, request_id: uuid.UUID | str) -> list[dict]:
    """For each manual task of the request: its id, processor and the text to send.

    The text holds the subject's e-mail address: show it to the officer, never log it.
    """
    request = get_request(session, request_id)
    subject = session.get(DataSubject, request.subject_id)
    policy = policy_from_settings(get_settings())
    assert subject is not None
    return [
        {
            "task_id": str(item.id),
            "processor": item.processor,
            "purpose": item.purpose,
            "text": manual_request_text(item, subject, request, policy.manual.get(item.processor), item.attempts),
            "reminders": item.attempts,
        }
        for item in tasks_of(session, request.id)
        if item.state == TaskState.manual_pending
    ]


def remind_manual(today: date, now: datetime) -> list[uuid.UUID]:
    """Flag every manual erasure whose confirmation is overdue for a reminder; the request ids.

    A manual request not confirmed ``erasure_manual_reminder_days`` Berlin calendar days after
    its text was made available is due for a reminder, and again after as many days more.
    Each reminder is counted on the task (``manual_requests`` then gives the reminder's
    text) and audited; nothing is sent from here (a person sends it).
    """
    policy = policy_from_settings(get_settings())
    reminded: list[uuid.UUID] = []
    with transaction() as session:
        pending = list(session.exec(select(ErasureTask).where(ErasureTask.state == TaskState.manual_pending)))
        due = [t for t in pending if reminder_due(t, policy, today)]
        pseudonyms = _pseudonyms(session, {t.request_id for t in due})
        events = []
        for item in due:
            item.attempts += 1
            item.updated_at = now
            item.detail = f"reminder {item.attempts} due {today}: send it; confirm with evidence"
            reminded.append(item.request_id)
            events.append(
                decision(
                    "erasure.manual_reminder",
                    "due",
                    item.processor,
                    pseudonyms[item.request_id],
                    f"request={item.request_id} purpose={item.purpose} reminder={item.attempts}",
                )
            )
        write_audit(session, events)
    return reminded


def confirm_manual(session: Session, task_id: uuid.UUID | str, evidence: str, now: datetime) -> ErasureTask:
    """A person confirms a manual erasure with evidence ("Bestätigung per Brief vom 3.3.").

    The evidence is checked like a reference (no e-mail address, no long number, not the
    person's name) and recorded with an audit row. When it was the last open recipient, the
    controller's copy is erased and the request completed right away.
    """
    item = get_by_id(session, ErasureTask, task_id, "erasure task")  # a malformed id too
    if item.state != TaskState.manual_pending:
        raise ValueError(f"the task is {item.state}, not waiting for a manual confirmation")
    request = session.get(ErasureRequest, item.request_id)
    assert request is not None
    subject = session.get(DataSubject, request.subject_id)
    evidence = check_free_text(evidence, "evidence", subject, limit=MAX_EVIDENCE)
    if not evidence:
        raise ValueError("evidence is required: what confirms the erasure, and when")
    item.state, item.evidence = TaskState.verified, evidence
    item.verified_at, item.verified_by, item.updated_at = now, "manual", now
    item.detail = ""
    _register_removed(session, item, now)
    pseudonym = _pseudonyms(session, [request.id])[request.id]
    write_audit(
        session,
        [
            decision(
                "erasure.manual_confirm",
                "verified",
                item.processor,
                pseudonym,
                f"request={request.id} purpose={item.purpose}",
            )
        ],
    )
    session.flush()
    finish_request(session, request, now)
    return item


def extend_request(
    session: Session,
    request_id: uuid.UUID | str,
    months: int,
    reason: str,
    informed_on: date,
    today: date,
) -> ErasureRequest:
    """``models.erasure.extend`` plus its audit row (the reason stays in the request only)."""
    request = extend(session, request_id, months, reason, informed_on, today)
    pseudonym = _pseudonyms(session, [request.id])[request.id]
    detail = f"request={request.id} months={request.extension_months} due={request.due}"
    write_audit(session, [decision("erasure.extend", "extended", None, pseudonym, detail)])
    return request
