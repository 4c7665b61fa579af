"""Newsletter and service-offers consent → CleverReach (seed 000).

Three flows, one Prefect task per batch of records:

- ``sync-newsletter-consents``: goes through every consent changed since the list's cursor:
  a confirmed one is pushed as an active receiver with its proof of consent, one that lapsed
  (withdrawn, expired, re-pending) stops mailing and is removed there. First it removes
  what earlier runs left (a failed delete): everyone the register says is still there
  without a standing consent. Unconfirmed sign-ups never leave the controller.
- ``pull-newsletter-unsubscribes``: receivers that turned inactive at CleverReach (the
  unsubscribe link in a newsletter) become local withdrawals with channel ``newsletter-link``;
  the next sync removes them there.
- ``expire-unconfirmed-optins``: unconfirmed sign-ups older than 30 days (newsletter) or 21
  days (service offers), in Berlin calendar days, lose their personal data; a pseudonymous
  audit record stays.

Each task owns its transaction: data, register, cursor and audit rows commit together, so a
crash between the call and the commit only means the (idempotent) batch is sent again.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, NamedTuple

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from pydantic import AwareDatetime, Field
from sqlalchemy import update
from sqlmodel import Session, col, select

from connectors import cleverreach
from connectors.transport import ProcessorError
from core.heap import collector_paused
from core.settings import Settings, get_settings
from flows.common import (
    NO_RESULTS,
    audit_failure,
    call_events,
    concurrently,
    counts_artifact,
    decision,
    one_line_failure,
    overlapped,
    tally,
    write_audit,
)
from flows.delivery import Reach, StreamJob, fail_if_parked, isolate, run_batch, run_wide, waiting
from models.audit import AuditEvent
from models.consent import (
    UNCONFIRMED,
    ConsentEvent,
    ConsentList,
    ConsentRecord,
    ConsentState,
    WithdrawChannel,
    apply_expire,
    apply_withdraw,
    changed_since,
    changes_ahead,
    confirmed_between,
    count_changed_since,
    expiry_candidates,
    expiry_due,
    lapsed_among,
    lapsed_subject_ids,
    push_rows_by_ids,
    stream_bounds,
)
from models.cursors import SyncCursor, cursor_position, get_cursor, next_seq
from models.db import scrub_journal, skip_locked, transaction
from models.recipients import (
    Recipient,
    live_for_other_purposes,
    live_recipient_ids_among,
    live_recipients,
    record_confirmed_many,
    record_may_hold_selected,
    record_removed_for,
    record_removed_many,
    record_sent_many,
)
from models.restriction import restricted
from models.subjects import DataSubject, erase_subject
from models.types import event_key, utcnow

PROCESSOR = cleverreach.PROCESSOR
ALL_LISTS = [ConsentList.newsletter, ConsentList.service_offers]


def _purpose(list_name: str) -> str:
    return f"consent:{list_name}"


def _cursor(list_name: str) -> str:
    return f"cleverreach:{list_name}"


def _group(settings: Settings, list_name: str) -> str:
    group = settings.cleverreach.group(list_name)
    if not group:
        raise ValueError(f"PSYNC_CLEVERREACH_GROUP_{list_name.upper()} is not configured")
    return group


def _unix(value: datetime | None) -> int:
    return int(value.timestamp()) if value else 0


def receiver_for(list_name: str, row) -> dict:
    """The CleverReach receiver for a confirmed consent: contact, proof, nothing more.

    `row` is a row of ``models.consent.PUSH_COLUMNS`` (times in Unix seconds).
    """
    # Unpacked by position: this runs for every receiver pushed, and a Row's attribute
    # lookups cost more than building the dict. The order is PUSH_COLUMNS'.
    (
        _,
        _,
        registered,
        signup_ip,
        activated,
        confirm_ip,
        source,
        policy_version,
        _,
        _,
        email,
        insurance_number,
        salutation,
        first_name,
        last_name,
        _,
    ) = row
    attributes = {
        "signup_ip": signup_ip or "",
        "confirm_ip": confirm_ip or "",
        "policy_version": policy_version or "",
    }
    if list_name == ConsentList.service_offers:
        attributes["insurance_number"] = insurance_number or ""
    return {
        "email": email,
        "source": source or "",
        # int(): PostgreSQL's EXTRACT gives a decimal; truncating matches int(timestamp()).
        "registered": int(registered or 0),
        "activated": int(activated or 0),
        "deactivated": 0,
        "global_attributes": {
            "salutation": salutation or "",
            "firstname": first_name or "",
            "lastname": last_name or "",
        },
        "attributes": attributes,
    }


# sync ---------------------------------------------------------------------------------
class _ListJob(StreamJob):
    """What a list's push and its removal pass share on the delivery path: the client and
    group of one list, every list's cursor locked in one order (``_lock_cursors``), and a
    batch context (``_Push``) that gathers counts and audit events."""

    def __init__(self, client: cleverreach.CleverReach, list_name: str, group: str, name: str):
        self.client, self.list_name, self.group, self.name = client, list_name, group, name
        self.clients = client.http  # the calls it made, for the audit
        self.cursor = _cursor(list_name)
        self.purpose = _purpose(list_name)

    def lock(self, session) -> int:
        return _lock_cursors(session)[self.list_name].position

    def begin(self, session, rows: Sequence) -> _Push:
        return _Push(session, utcnow())

    def finish(self, ctx: _Push) -> tuple[Counter[str], list[AuditEvent]]:
        return ctx.counts, ctx.events


class RemovalJob(_ListJob):
    """One list's leftover removals through the delivery path (``flows.delivery``): a
    record is a live register row whose consent lapsed (what a failed delete or a crash of
    an earlier run left), named by the flow. Nothing new leaves, so nothing is written
    ahead; a delete that fails for good is parked, one that may work later is tried again
    by the next run, and the run says so."""

    id_field = "id"

    def __init__(self, client: cleverreach.CleverReach, list_name: str, group: str):
        super().__init__(client, list_name, group, f"{job_name(list_name)}:removal")

    def select(self, session, after: int, limit: int) -> list:
        return []  # named runs only: the flow lists what is left

    def by_ids(self, session, ids: Sequence[str]) -> list:
        rows = live_recipients(session, PROCESSOR, self.purpose, [uuid.UUID(str(i)) for i in ids])
        # Asked again here: a consent confirmed since the flow listed the ids keeps its receiver.
        lapsed = lapsed_among(session, self.list_name, [r.subject_id for r in rows])
        return [r for r in rows if r.subject_id in lapsed]

    def reaches(self, session, rows: Sequence) -> list[Reach]:
        return []

    def held(self, ctx: _Push, row) -> AuditEvent:
        return decision("newsletter.remove", "held", PROCESSOR, row.pseudonym, self.list_name)

    def deliver_many(
        self, ctx: _Push, rows: Sequence, meanwhile: Callable[[], None] | None = None
    ) -> dict[str, Exception]:
        counts, events, failures = _remove(ctx.session, self.client, self.list_name, self.group, rows, ctx.now)
        ctx.counts.update(counts)
        ctx.events += events
        return failures


@task(name="remove-withdrawn-batch", cache_policy=NO_CACHE)
@one_line_failure
def remove_batch(client: cleverreach.CleverReach, list_name: str, group: str, ids: list[uuid.UUID]) -> dict:
    """Stop mailing and remove the receivers of these register rows whose consent lapsed
    (``RemovalJob`` through ``run_batch``)."""
    with collector_paused():
        return run_batch(RemovalJob(client, list_name, group), len(ids), [str(i) for i in ids])


def _remove(
    session,
    client: cleverreach.CleverReach,
    list_name: str,
    group: str,
    rows: Sequence,
    now: datetime,
    elsewhere: set[uuid.UUID] | None = None,
) -> tuple[Counter[str], list[AuditEvent], dict[str, Exception]]:
    """Remove these live register rows' receivers (rows with id, external_id, subject_id,
    email, pseudonym); mark the register; returns counts, audit events and the rows whose
    removal failed (by register row id).

    CleverReach deletes from one group a receiver per call, but from the whole account a
    batch of addresses per call. Whom the account holds for nothing else (``_account_wide``)
    goes that way first. Everyone still there then is deactivated, in one call, so mailing
    stops even if a delete fails, and deleted from the group one DELETE each, a few at a
    time. A failed delete leaves the register row live for the next run. A row with a
    receiver id (kept by a rectification) is deactivated and deleted by that id. The HTTP
    layer's rate limiter paces every call. The caller holds every list's cursor
    (``_lock_cursors``); `elsewhere` as ``_account_wide``'s.
    """
    counts: Counter[str] = Counter()
    events: list[AuditEvent] = []
    # A receiver id in the register was kept by a rectification (flows/amend.py): CleverReach
    # may hold the receiver under another address than ours (a change of address half
    # done), so it is deactivated and deleted by that id, never by our address.
    by_id = [r for r in rows if r.external_id]
    rows = [r for r in rows if not r.external_id] if by_id else rows
    everywhere = _account_wide(session, client, list_name, [r.subject_id for r in rows if r.email], elsewhere)
    bulk, size = [r for r in rows if r.subject_id in everywhere], client.batch_size
    batches = [bulk[i : i + size] for i in range(0, len(bulk), size)]
    outcomes = concurrently(client.bulk_delete, [[r.email for r in batch] for batch in batches])
    done, left = [], [r for r in rows if r.subject_id not in everywhere]
    for batch, outcome in zip(batches, outcomes, strict=True):
        done += [(row, outcome, f"{list_name}, account-wide") for row in batch]
        if isinstance(outcome, ProcessorError):
            left += batch  # deactivated below; deleted by the next run
    # CleverReach refuses a whole upsert for one receiver it will not take (``isolate``
    # finds it): one refused address must not hold up the others' removal, nor the batch.
    deactivated, _ = isolate(partial(_deactivate, client, group, list_name, now), [r for r in left if r.email])
    answered = [receiver for _, answer in deactivated for receiver in answer]
    # Stop mailing first here too; a failure is the delete's to say.
    concurrently(partial(client.deactivate, group), [r.external_id for r in by_id])
    # The upsert creates a receiver that is gone already (a delete of an earlier run was
    # applied but its answer lost), under a new id: delete the one it answered for.
    current = {a["email"].lower(): str(a["id"]) for a in answered}
    single = [
        (r, current.get(r.email or "") or r.external_id or r.email) for r in left if r.subject_id not in everywhere
    ] + [(r, r.external_id) for r in by_id]
    failures: dict[str, Exception] = {}
    for row, _ in (t for t in single if not t[1]):
        # Nothing to address it by: never send an empty path segment.
        failures[str(row.id)] = ValueError("no identifier to address the receiver by")
        events.append(decision("newsletter.remove", "failed", PROCESSOR, row.pseudonym, "no identifier"))
    single = [t for t in single if t[1]]
    outcomes = concurrently(partial(client.delete, group), [target for _, target in single])
    done += [(row, outcome, list_name) for (row, _), outcome in zip(single, outcomes, strict=True)]
    removed: list[uuid.UUID] = []
    for row, outcome, detail in done:
        if isinstance(outcome, ProcessorError):
            if run_wide(outcome):
                raise outcome
            failures[str(row.id)] = outcome
            events.append(decision("newsletter.remove", "failed", PROCESSOR, row.pseudonym, status=outcome.status))
            continue
        removed.append(row.id)
        events.append(decision("newsletter.remove", "removed", PROCESSOR, row.pseudonym, detail))
    counts["removed"] += record_removed_many(session, removed, now)
    return counts, events, failures


def _deactivate(client: cleverreach.CleverReach, group: str, list_name: str, now: datetime, rows: list) -> list[dict]:
    """Stop mailing these rows' receivers (one upsert); CleverReach's receiver objects."""
    return client.upsert(group, list_name, [{"email": r.email, "deactivated": _unix(now)} for r in rows])


def _lock_cursors(session) -> dict[str, SyncCursor]:
    """Every list's cursor, locked until the transaction ends, always in the same order.

    Pushes and removals both take them first: a removal may delete an address from the
    whole account (``_account_wide``), which must not happen while a push to another list
    is between its upsert and its commit; and two transactions taking the same locks in
    opposite orders would deadlock on PostgreSQL. So the lists' pushes and removals run one
    at a time (CleverReach's rate limit is the account's anyway). SQLite serialises writing
    transactions already.
    """
    return {name: get_cursor(session, _cursor(name)) for name in ALL_LISTS}


def _account_wide(
    session,
    client: cleverreach.CleverReach,
    list_name: str,
    subject_ids: list[uuid.UUID],
    elsewhere: set[uuid.UUID] | None = None,
) -> set[uuid.UUID]:
    """The subjects among these whose addresses may be deleted from the whole CleverReach
    account: the account has no group but this sync's, and the register has none of them
    there for another purpose.

    Asks CleverReach for its groups (a group someone added by hand may hold the address for
    a purpose we do not know of). `elsewhere`: the subjects (a superset of these) the
    register has live there for another purpose, if the caller read them in this
    transaction already; otherwise read here.

    The caller holds the other lists' cursors until the delete commits: a push to another
    list holds its cursor for its whole transaction and registers what it sent in it, so it
    ended before this check (and the register shows it) or begins after the delete (and
    sends its consents, confirmed or not yet pushed, from its cursor).
    """
    if not subject_ids:
        return set()
    settings = get_settings()
    ours = {str(settings.cleverreach.group(name) or "") for name in ALL_LISTS}
    if not {str(g["id"]) for g in client.groups()} <= ours:
        return set()
    if elsewhere is None:
        elsewhere = live_for_other_purposes(session, PROCESSOR, _purpose(list_name), subject_ids)
    return set(subject_ids) - elsewhere


class ConsentJob(_ListJob):
    """One list's push through the delivery path (``flows.delivery``).

    A record is a consent record (its id names it, not the person), taken in change order
    after the list's cursor. A confirmed one may carry the person to CleverReach: it is
    written ahead as "may hold", then upserted with its proof, in batches of the client's
    size, two on the wire, while this thread records what the earlier ones answered (a wave
    of register rows per statement, an audit decision per call). A batch refused for good is split down to
    the record it was refused for (``isolate``), which is parked; the others go. A consent
    that lapsed is removed at CleverReach in the same pass (``_remove_lapsed``).
    """

    id_field = "consent_id"

    def __init__(self, client: cleverreach.CleverReach, list_name: str, group: str):
        super().__init__(client, list_name, group, job_name(list_name))

    def record_id(self, row) -> str:
        return _record_of(row)

    def seq(self, row) -> int:
        return row.change_seq

    def select(self, session, after: int, limit: int) -> list:
        return changed_since(session, self.list_name, after, limit)

    def select_ahead(self, session, after: int, limit: int) -> list:
        return changes_ahead(session, self.list_name, after, limit)

    def stream_bounds(self, session, after: int, limit: int) -> tuple[int, int | None]:
        return stream_bounds(session, self.list_name, after, limit)

    def write_ahead_between(self, session, after: int, through: int, now: datetime) -> int:
        """``reaches`` of the changes after `after` up to `through`, written ahead by the
        database: a full sync's batch is 20,000 subjects, which cost more to read than to write."""
        params = {"list": self.list_name, "after": after, "through": through}
        subjects = confirmed_between(session.get_bind().dialect.name)
        return record_may_hold_selected(session, PROCESSOR, self.purpose, subjects, params, now)

    def by_ids(self, session, ids: Sequence[str]) -> list:
        return push_rows_by_ids(session, self.list_name, ids)

    def reaches(self, session, rows: Sequence) -> list[Reach]:
        # A confirmed one whose address was erased is written ahead all the same: "may
        # hold" errs safe.
        return [Reach(r.subject_id, PROCESSOR, self.purpose) for r in rows if r.state == ConsentState.confirmed]

    def held(self, ctx: _Push, row) -> AuditEvent:
        return decision("newsletter.push", "held", PROCESSOR, row.pseudonym, self.list_name)

    def deliver_many(
        self, ctx: _Push, rows: Sequence, meanwhile: Callable[[], None] | None = None
    ) -> dict[str, Exception]:
        """Remove the lapsed, upsert the confirmed (`meanwhile` runs while the first
        upserts are on the wire); the records refused, by id."""
        client, session, now = self.client, ctx.session, ctx.now
        confirmed = [r for r in rows if r.state == ConsentState.confirmed and r.email]
        size = client.batch_size
        units = [confirmed[i : i + size] for i in range(0, len(confirmed), size)]
        per_wave = max(1, _WAVE // size)
        wave: list[uuid.UUID] = []  # subjects CleverReach answered for, not yet recorded
        calls: list[int] = []  # receivers per answered upsert of the wave
        upsert = partial(_upsert, client, self.group, self.list_name)
        with overlapped(partial(isolate, upsert, unit) for unit in units) as answers:
            # The lapsed are removed while the first upserts are out: other people (a
            # consent is confirmed or lapsed), and an incremental sync's deletes then cost
            # no wall time of their own.
            counts, events, failures = _remove_lapsed(session, client, self.list_name, self.group, rows, now)
            if meanwhile is not None:
                meanwhile()
            for index, (sent, refused) in enumerate(answers, start=1):
                for unit, _ in sent:
                    wave += [r.subject_id for r in unit]
                    calls.append(len(unit))
                failures.update((self.record_id(row), exc) for row, exc in refused)
                if index % per_wave == 0 and wave:  # the last wave is recorded below
                    _record_sent(session, self.list_name, self.purpose, wave, calls, now)
                    counts["pushed"] += len(wave)
                    wave, calls = [], []
        if wave:
            _record_sent(session, self.list_name, self.purpose, wave, calls, now)
            counts["pushed"] += len(wave)
        # One decision per change: a lapsed consent removed (or tried) above has its event;
        # the others (pending, or never sent) are held here.
        decided = {event.subject for event in events}
        for row in rows:
            if row.state != ConsentState.confirmed and row.pseudonym not in decided:
                counts[f"not_pushed_{row.state}"] += 1
                events.append(decision("newsletter.hold", "skipped", PROCESSOR, row.pseudonym, str(row.state)))
        ctx.counts.update(counts)
        ctx.events += events
        return failures


def _record_of(row) -> str:
    """A consent row's record id: its id as read (``models.consent._RAW_ID``), written the
    one way on every database."""
    return str(uuid.UUID(str(row.consent_id)))


@dataclass
class _Push:
    """A push batch's context: its transaction, its time, what it counted and decided."""

    session: Session
    now: datetime
    counts: Counter[str] = field(default_factory=Counter)
    events: list[AuditEvent] = field(default_factory=list)


# The first push task's records at most: nothing is on the wire while a task writes its own
# records ahead and reads them, and the later tasks' are written while the one before is
# sending. A small first task gets the calls going (0.2 s sooner in a 100,000 sync).
_FIRST_TASK = 2000


def task_sizes(changes: int, records_per_task: int) -> list[int]:
    """The records each push task asks for: a small first one (``_FIRST_TASK``), then
    `records_per_task` each, for `changes` changes.

    >>> task_sizes(45000, 20000)
    [2000, 20000, 20000, 20000]
    >>> task_sizes(500, 20000), task_sizes(0, 20000), task_sizes(30, 10)
    ([2000], [], [10, 10, 10])
    """
    if changes <= 0:
        return []
    first = min(records_per_task, _FIRST_TASK)
    return [first] + [records_per_task] * math.ceil(max(0, changes - first) / records_per_task)


def job_name(list_name: str) -> str:
    """The delivery job of a list's push: its parked items and audit actions go by it."""
    return f"sync-newsletter-consents:{list_name}"


@task(name="push-confirmed-batch", cache_policy=NO_CACHE)
@one_line_failure
def push_batch(
    client: cleverreach.CleverReach, list_name: str, group: str, limit: int, next_limit: int | None = None
) -> dict:
    """Push the next batch of changed consents after the list's cursor, or the ones a
    run left to retry; advance the cursor (``ConsentJob`` through ``run_batch``), and write
    the next `next_limit` (default `limit`) ahead while the calls are on the wire.

    The batch's confirmed receivers are registered as "may hold" and committed before
    any of them is sent; data, register, cursor and audit rows then commit together.
    """
    with collector_paused():
        return run_batch(ConsentJob(client, list_name, group), limit, next_limit=next_limit)


# Receivers recorded per statement while later calls are on the wire: big enough that the
# sorted inserts find their index pages already read, small enough that the last wave's
# writes (which nothing overlaps) stay short.
_WAVE = 5000


def _unsure(row) -> bool:
    """Whether CleverReach may hold a changed consent's receiver that must go: it was
    confirmed once (``activated``) and stands no more. Only a confirmation sets ``activated``."""
    return row.state != ConsentState.confirmed and bool(row.activated) and bool(row.email)


def _remove_lapsed(
    session,
    client: cleverreach.CleverReach,
    list_name: str,
    group: str,
    rows: Sequence,
    now: datetime,
) -> tuple[Counter[str], list[AuditEvent], dict[str, Exception]]:
    """Remove at CleverReach the consents among `rows` that were confirmed and stand no more;
    returns counts, audit events (for the batch's one audit write, after its register rows)
    and the records whose removal failed, by consent id.

    - Live in the register: removed (``_remove``), in this pass over the changes, so a
      withdrawal costs no second pass; a failed delete is left to the removal pass.
    - Not in the register at all: a run that died between its upsert and its commit may have
      sent it, and the register cannot know. Deleted by address; if CleverReach still held
      it, registered as sent and removed. A 404 means it never arrived. A failed call is
      the record's failure: tried again on the next run (or parked), the others go on.
    - Removed in the register: nothing is left there.

    Unconfirmed sign-ups never get here: only a confirmation sets ``activated``.
    """
    purpose = _purpose(list_name)
    unsure = {r.subject_id: r for r in rows if _unsure(r)}
    if not unsure:
        return Counter(), [], {}
    # Every purpose's rows at once: this one's are the register of the removal, the others'
    # what ``_account_wide`` asks (is the address held for anything else?), in one query.
    rows_of = (
        session.connection()
        .execute(
            select(  # type: ignore[call-overload]  # sqlmodel's select is typed for at most 4 columns
                Recipient.id, Recipient.external_id, Recipient.subject_id, Recipient.removed_at, Recipient.purpose
            ).where(Recipient.processor == PROCESSOR, col(Recipient.subject_id).in_(list(unsure)))
        )
        .all()
    )
    register = [r for r in rows_of if r.purpose == purpose]
    elsewhere = {r.subject_id for r in rows_of if r.purpose != purpose and r.removed_at is None}
    live = [
        _Held(r.id, r.external_id, r.subject_id, unsure[r.subject_id].email, unsure[r.subject_id].pseudonym)
        for r in register
        if r.removed_at is None
    ]
    counts, events, left = (
        _remove(session, client, list_name, group, live, now, elsewhere=elsewhere) if live else (Counter(), [], {})
    )
    if left:  # left live in the register: the removal pass takes them
        counts["remove_failed"] += len(left)
    known = {r.subject_id for r in register}
    failures: dict[str, Exception] = {}
    for row in unsure.values():
        if row.subject_id in known:
            continue
        try:
            held = client.delete(group, row.email)
        except ProcessorError as exc:
            if run_wide(exc):
                raise
            failures[_record_of(row)] = exc
            events.append(decision("newsletter.remove", "failed", PROCESSOR, row.pseudonym, list_name, exc.status))
            continue
        if held:
            record_sent_many(session, PROCESSOR, purpose, {row.subject_id: None}, now)
            record_removed_for(session, row.subject_id, PROCESSOR, purpose, now)
            counts["removed"] += 1
            events.append(decision("newsletter.remove", "removed", PROCESSOR, row.pseudonym, list_name))
    return counts, events, failures


class _Held(NamedTuple):
    """A live register row with what removing its receiver takes."""

    id: uuid.UUID
    external_id: str | None
    subject_id: uuid.UUID
    email: str | None
    pseudonym: str


def _record_sent(session, list_name: str, purpose: str, subjects: list, calls: list[int], now: datetime) -> None:
    """Register the receivers CleverReach acknowledged as held, and audit each upsert that
    carried them: one "sent" decision per call, with how many receivers it carried.

    Per call, not per receiver: the register holds each subject's first and last sending,
    and a full sync would otherwise add an HMAC-chained row per subscriber on every run
    (a million rows for a million subscribers), which cost more than the calls themselves.
    Who consented, and when, is in the consent events, audited at intake one by one.
    """
    # Register rows before the audit head, the order the removal takes them in too: two
    # workers locking the same two things in opposite orders could deadlock on PostgreSQL.
    # Their rows were written ahead; CleverReach's receiver id is not kept: a receiver is
    # addressed by its e-mail in the group, the erasure and the removals do so.
    record_confirmed_many(session, PROCESSOR, purpose, subjects, now)
    write_audit(session, [decision("newsletter.push", "sent", PROCESSOR, None, list_name, receivers=n) for n in calls])


def _upsert(client: cleverreach.CleverReach, group: str, list_name: str, rows: list) -> int:
    """Upsert these rows' receivers; returns how many CleverReach answered for.

    Runs in a worker thread (under ``isolate``): building the payload there leaves this
    thread free for the database work of the calls answered before.
    """
    return len(client.upsert(group, list_name, [receiver_for(list_name, r) for r in rows]))


@flow(name="sync-newsletter-consents", **NO_RESULTS)
@one_line_failure
def sync_newsletter_consents(
    lists: list[ConsentList] | None = None,
    # The bounds of PSYNC_CLEVERREACH_BATCH_SIZE.
    batch_size: Annotated[int, Field(ge=1, le=1000)] | None = None,
    records_per_task: Annotated[int, Field(ge=1, le=100_000)] = 20000,
) -> dict[str, int]:
    """Bring CleverReach in line with local consent: leftover removals first, then the changes.

    A task's records are also one transaction: the calls for them, their register and audit
    rows and the cursor commit together. More records per task means fewer commits (each
    rewrites the index pages the batch touched, whatever its size) but more to send again
    after a crash, and on SQLite a longer hold on the write lock (at the default 10 calls/s,
    20,000 records are 80 calls, ~8 s).

    Args:
        lists: Which consent lists to sync; empty means both (newsletter, service offers).
        batch_size: Receivers per CleverReach call, 1–1,000 (empty: PSYNC_CLEVERREACH_BATCH_SIZE).
        records_per_task: Consents handled per Prefect task and database commit, 1–100,000.
    """
    settings = get_settings()
    logger = get_run_logger()
    started = utcnow()
    # One client per run: its token and connection pool serve every task.
    client = cleverreach.from_settings(settings)
    if batch_size:
        client.batch_size = batch_size
    results = []
    for list_name in lists or ALL_LISTS:
        group = _group(settings, list_name)
        # Find the work first, so no task run is spent finding out that nothing is left.
        # Removals: only consents the cursor has passed (what earlier runs left); the push
        # removes the ones that lapsed since, as it reaches them.
        with transaction() as session:
            position = cursor_position(session, _cursor(list_name))
            removals = live_recipient_ids_among(
                session, PROCESSOR, _purpose(list_name), lapsed_subject_ids(list_name, position)
            )
            changes = count_changed_since(session, list_name, position)
            changes += waiting(session, job_name(list_name))
        for start in range(0, len(removals), records_per_task):
            # quote(): Prefect would otherwise walk the id list for futures to resolve, twice.
            ids = quote(removals[start : start + records_per_task])
            results.append(remove_batch(client, list_name, group, ids))  # type: ignore[call-overload]  # Prefect unwraps quote()
        for limit in task_sizes(changes, records_per_task):  # each writes the next (records_per_task) ahead
            results.append(push_batch(client, list_name, group, limit, records_per_task))
    counts = tally(results)
    logger.info("sync finished: %s", counts)
    counts_artifact(
        "sync-newsletter-consents",
        "Newsletter-Einwilligungen mit CleverReach abgeglichen / Newsletter consent sync",
        counts,
    )
    for list_name in lists or ALL_LISTS:
        fail_if_parked(job_name(list_name), started)
        fail_if_parked(f"{job_name(list_name)}:removal", started)
    return counts


# pull unsubscribes --------------------------------------------------------------------
@task(name="pull-unsubscribes-for-list", cache_policy=NO_CACHE)
@one_line_failure
def pull_list(client: cleverreach.CleverReach, list_name: str, group: str) -> dict:
    """Record every receiver inactive at CleverReach whose consent here still stands."""
    key = get_settings().hmac_key()
    counts: Counter[str] = Counter()
    with audit_failure(client.http, "newsletter.pull"):
        inactive = {
            r["email"].lower(): int(r.get("deactivated") or 0) for r in client.iter_receivers(group, kind="inactive")
        }
    counts["inactive_at_processor"] = len(inactive)
    with transaction() as session:
        events: list[AuditEvent] = []
        emails = list(inactive)
        paused = restricted(session)
        for start in range(0, len(emails), 1000):
            chunk = emails[start : start + 1000]
            # Claimed: a second worker pulling at once skips these instead of withdrawing
            # them twice (the second withdrawal event would break its unique key).
            rows = session.exec(
                skip_locked(
                    select(ConsentRecord, DataSubject)
                    .join(DataSubject, col(DataSubject.id) == col(ConsentRecord.subject_id))
                    .where(
                        ConsentRecord.list_name == list_name,
                        ConsentRecord.state == ConsentState.confirmed,
                        col(DataSubject.email).in_(chunk),
                    ),
                    ConsentRecord,
                )
            ).all()
            # A receiver made inactive for a restriction (Art. 18; flows/amend.py) is not an
            # unsubscribe: its consent stands.
            rows = [row for row in rows if row[0].subject_id not in paused] if paused else rows
            if not rows:
                continue
            seq = next_seq(session, "consent", len(rows))
            for offset, (record, subject) in enumerate(rows):
                stamp = inactive[subject.email or ""]
                at = datetime.fromtimestamp(stamp, UTC) if stamp else utcnow()
                dedupe = event_key(key, "cleverreach-unsubscribe", record.id, stamp)
                event = apply_withdraw(record, at, WithdrawChannel.newsletter_link, seq + offset, dedupe)
                if event is not None:
                    session.add(event)
                    counts["withdrawn"] += 1
                    events.append(
                        decision("consent.withdraw", "recorded", PROCESSOR, subject.pseudonym, "newsletter-link")
                    )
        write_audit(session, call_events(client.http.drain_calls()) + events)
    return dict(counts)


@flow(name="pull-newsletter-unsubscribes", **NO_RESULTS)
@one_line_failure
def pull_newsletter_unsubscribes(lists: list[ConsentList] | None = None) -> dict[str, int]:
    """Pull unsubscribes clicked in newsletters back as local withdrawals.

    Args:
        lists: Which consent lists to read unsubscribes for; empty means both.
    """
    settings = get_settings()
    client = cleverreach.from_settings(settings)
    counts = tally(pull_list(client, name, _group(settings, name)) for name in lists or ALL_LISTS)
    counts_artifact(
        "pull-newsletter-unsubscribes",
        "Abmeldungen von CleverReach übernommen / Unsubscribes pulled from CleverReach",
        counts,
    )
    return counts


# expire -------------------------------------------------------------------------------
@task(name="expire-batch", cache_policy=NO_CACHE)
@one_line_failure
def expire_batch(
    list_name: str,
    days: int,
    as_of: datetime,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> tuple[dict, tuple[datetime, uuid.UUID] | None]:
    """Expire one batch of due pending sign-ups and erase their personal data."""
    key = get_settings().hmac_key()
    counts: Counter[str] = Counter()
    # Calendar days differ from 24-hour days by at most the one-hour DST shift.
    bound = as_of - timedelta(days=days) + timedelta(hours=1)
    with transaction() as session:
        candidates = expiry_candidates(session, list_name, bound, after, limit)
        if not candidates:
            return {}, None
        due = [r for r in candidates if expiry_due(r.signup_at, days) <= as_of]
        events: list[AuditEvent] = []
        subjects = {
            s.id: s
            for s in session.exec(select(DataSubject).where(col(DataSubject.id).in_([r.subject_id for r in due])))
        }
        for record in due:
            session.add(apply_expire(record, as_of, event_key(key, "expire", record.id, record.signup_at)))
            events.append(
                decision("consent.expire", "erased", PROCESSOR, subjects[record.subject_id].pseudonym, list_name)
            )
        if due:
            ids = [r.id for r in due]
            # The proof of a sign-up that never got confirmed is personal data without purpose.
            session.execute(
                update(ConsentEvent).where(col(ConsentEvent.consent_id).in_(ids)).values(ip=None, source=None)
            )
            session.flush()
            counts["expired"] = len(due)
            counts["subjects_erased"] = _erase_unused_subjects(session, subjects.values(), as_of, key)
        write_audit(session, events)
        last = candidates[-1]
    return dict(counts), (last.signup_at, last.id)


def _erase_unused_subjects(session, subjects, now: datetime, key: bytes) -> int:
    """Erase subjects that nothing else (another consent, a processor) still needs."""
    ids = [s.id for s in subjects]
    in_use = set(
        session.exec(
            select(ConsentRecord.subject_id).where(
                col(ConsentRecord.subject_id).in_(ids),
                col(ConsentRecord.state).in_([*UNCONFIRMED, ConsentState.confirmed]),
            )
        )
    )
    in_use |= set(
        session.exec(
            select(Recipient.subject_id).where(
                col(Recipient.subject_id).in_(ids),
                col(Recipient.removed_at).is_(None),
            )
        )
    )
    erased = 0
    for subject in subjects:
        if subject.id not in in_use and subject.erased_at is None:
            erase_subject(session, subject, key, now)
            erased += 1
    return erased


@flow(name="expire-unconfirmed-optins", **NO_RESULTS)
@one_line_failure
def expire_unconfirmed_optins(
    as_of: AwareDatetime | None = None,
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 1000,
) -> dict[str, int]:
    """Erase unconfirmed sign-ups past their list's period (30 / 21 Berlin calendar days).

    Args:
        as_of: The moment to judge by, with its timezone (empty: now); set it to replay a day.
        batch_size: Sign-ups handled per Prefect task, 1–10,000.
    """
    settings = get_settings()
    # A time without its zone is refused with the parameters, before the run is made.
    now = as_of or utcnow()
    results = []
    for list_name in ALL_LISTS:
        days = getattr(settings, f"optin_expiry_days_{list_name}")
        after = None
        while True:
            counts, after = expire_batch(list_name, days, now, after, batch_size)
            results.append(counts)
            if after is None:
                break
    counts = tally(results)
    if counts.get("expired"):  # the expired sign-ups' old page versions must leave the WAL
        scrub_journal()
    counts_artifact(
        "expire-unconfirmed-optins",
        "Unbestätigte Anmeldungen abgelaufen / Unconfirmed sign-ups expired",
        counts,
    )
    return counts
