"""The one delivery path: how a batch of records reaches a processor, registered before it
leaves, one record at a time, and one bad record never blocks the rest.

A job (bookings → TIMIFY and Flexperto, student-ID orders → the card issuer) declares what
one record is and how it is sent (``Job``); ``run_batch`` owns the rest, once:

1. **Claim and write ahead** (one transaction, committed): the records after the job's
   cursor, the ones its last runs left to retry first; for each record that may carry a
   person's data somewhere, a "may hold" register row per (subject, processor, purpose)
   (``models.recipients.record_may_hold_by_purpose``). From here on an erasure finds that data,
   whatever happens to the calls: a crash, a fault, a rollback. A job that sends in bulk
   (the newsletter) has the batch before write this one ahead while its own calls were on
   the wire, committed with it (``_write_next_ahead``); then this step only locks the cursor.
2. **Deliver** (one transaction, the cursor locked again): the same records (had another
   worker moved the cursor in between, what follows it was not written ahead by this batch:
   it starts over at step 1; whoever step 1 left out stays held, and of the retry queue
   only what step 1 took goes), each sent on its own: one person's records one after the
   other on one worker, several people at once (``PSYNC_HTTP_IN_FLIGHT``), every call paced
   by the processor's one token bucket in the HTTP layer. A record whose call fails for good (a 4xx
   other than auth, our own validation) is parked with its reason; one that failed for a
   retriable reason (5xx, timeout, 429, no answer) is marked for the next run, which tries
   it first. Either way the stream moves on: the cursor passes every record of the batch.
   An auth failure or missing configuration fails the batch: no record could go.
3. **Record**: the job's own outcome (ids, register "holds"), parked items resolved or
   counted, every call and decision in the audit trail, the cursor advanced, one commit.

A record of a subject whose erasure request is open is held: nothing is sent, the
decision audited; what the processor may already hold is found by the erasure through the
register rows written ahead by earlier runs.

A record that would carry a restricted subject's data (Art. 18: ``models.restriction``), or
the data of a subject whose rectification is open (``models.rights.held_back``), is held
back the same way, and noted there: lifting the restriction, or completing the
rectification, hands it to the job's retry queue, so it goes then (a hold written after
the lift looked, by a batch that was sending then, is released by the job's next batch). A record that carries
nothing (a cancellation, a removal) still goes: it only stops processing.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from sqlmodel import Session, col, select

from connectors.transport import CallRecord, ProcessorError, in_flight
from core.settings import get_settings
from flows import journal
from flows.common import JobFailed, Pace, call_events, decision, reason, write_audit
from models.audit import AuditEvent
from models.cursors import advance_cursor, get_cursor
from models.db import transaction
from models.erasure import being_erased
from models.parked import ParkedItem, ParkState, drop, due_for_retry, get_item, park, resolve, retry_later
from models.recipients import record_may_hold_by_purpose
from models.restriction import RELEASED, hold_back, lifted_holds, release, release_lifted
from models.rights import held_back
from models.types import utcnow

Row = TypeVar("Row")
R = TypeVar("R")
# Statuses that say the call could not work for any record: fail the batch, park nothing.
_RUN_WIDE = {401, 403}
# Shown in a failed run's message: the first few parked records (ids only).
_NAMED = 10
_MOST_STARTS = 100
log = logging.getLogger(__name__)


class Reach(NamedTuple):
    """Where one record may carry a person's data: what is written ahead of its calls.
    (A tuple: a batch makes one per record, and a frozen dataclass costs three times as much.)"""

    subject_id: uuid.UUID
    processor: str
    purpose: str
    external_id: str | None = None


class Clients(Protocol):
    def drain_calls(self) -> list[CallRecord]: ...


class Job(Protocol, Generic[Row]):
    """What a job declares; ``run_batch`` does the rest.

    - ``name``: the job (parked items, audit actions); ``cursor``: its cursor's name.
    - ``clients``: its connectors (``drain_calls`` for the audit).
    - ``select(session, after, limit)``: records after cursor position `after`, in change
      order; ``by_ids(session, ids)``: the records with these ids.
    - ``record_id(row)`` (not personal), ``seq(row)`` (its position in the stream) and
      ``subject_id(row)``: ``StreamJob`` gives all three from an ``id_field``.
    - ``reaches(session, rows)``: where each record may carry data (only records that will
      send); ``held(ctx, row)``: the audit event of a record held (erasure open).
    - ``begin(session, rows)`` → the batch's context; ``deliver(ctx, row)`` sends one
      record (raising fails only that record; only ``StreamJob``'s default
      ``deliver_many`` calls it, so it is no member here), on a worker thread, concurrently
      with other people's records: its work on the session and on the context's shared
      counts is done under the context's lock; ``finish(ctx)`` records what the batch
      confirmed (register "holds") and returns its counts and audit events.
    - ``StreamJob`` gives the rest a default a job may override: ``lock`` (the cursor,
      locked), ``select_ahead`` (the records as the write-ahead needs them: a job whose
      full records cost more to read gives lighter ones with the same ids, ``seq`` and
      ``subject_id``), and ``deliver_many(ctx, rows)`` (a job with a batch call, such as
      CleverReach's upsert, sends the records in batches: ``isolate`` finds the one record
      a batch was refused for). A ``deliver_many`` whose calls run on worker threads calls
      `meanwhile` (if given) once, while they are on the wire: it writes the next batch
      ahead in this batch's transaction (``_write_next_ahead``), work that then costs no
      wall time. A job whose records' reach a query can say (the newsletter: every
      confirmed consent among the changes) may write ahead in the database instead,
      without reading them: ``stream_bounds`` (how many records follow a position, up to a
      limit, and the last one's seq; ``None``, the default: read them) and
      ``write_ahead_between`` (the register rows of the records after one seq up to
      another). Used only when nobody is left out (erasure, restriction): otherwise the
      records are read and looked at one by one.
    """

    name: str
    cursor: str
    clients: Any

    def select(self, session: Session, after: int, limit: int) -> list[Row]: ...
    def by_ids(self, session: Session, ids: Sequence[str]) -> list[Row]: ...
    def record_id(self, row: Row) -> str: ...
    def seq(self, row: Row) -> int: ...
    def subject_id(self, row: Row) -> uuid.UUID: ...
    def reaches(self, session: Session, rows: Sequence[Row]) -> list[Reach]: ...
    def begin(self, session: Session, rows: Sequence[Row]) -> Any: ...
    def held(self, ctx: Any, row: Row) -> AuditEvent: ...
    def finish(self, ctx: Any) -> tuple[Counter[str], list[AuditEvent]]: ...
    def lock(self, session: Session) -> int: ...
    def select_ahead(self, session: Session, after: int, limit: int) -> list[Any]: ...
    def stream_bounds(self, session: Session, after: int, limit: int) -> tuple[int, int | None] | None: ...
    def write_ahead_between(self, session: Session, after: int, through: int, now: datetime) -> int: ...
    def deliver_many(
        self, ctx: Any, rows: Sequence[Row], meanwhile: Callable[[], None] | None = None
    ) -> dict[str, Exception]: ...


class StreamJob:
    """What most jobs share: a record is a row with ``seq`` (its place in the stream) and
    ``subject_id``, and an id column (``id_field``) that names it, not the person; the
    cursor is the job's own; records are read once for the write-ahead and once to send,
    and sent one at a time."""

    id_field: str
    cursor: str

    def record_id(self, row: Any) -> str:
        return str(getattr(row, self.id_field))

    def seq(self, row: Any) -> int:
        return row.seq

    def subject_id(self, row: Any) -> uuid.UUID:
        return row.subject_id

    def lock(self, session: Session) -> int:
        """The cursor's position, locked until the transaction ends."""
        return get_cursor(session, self.cursor).position

    def select_ahead(self, session: Session, after: int, limit: int) -> list[Any]:
        return self.select(session, after, limit)  # type: ignore[attr-defined]  # the subclass's select (Job)

    def stream_bounds(self, session: Session, after: int, limit: int) -> tuple[int, int | None] | None:
        return None  # the records are read (select_ahead) and their reaches written ahead

    def write_ahead_between(self, session: Session, after: int, through: int, now: datetime) -> int:
        raise NotImplementedError("only a job whose stream_bounds answers writes ahead in the database")

    def deliver_many(
        self, ctx: Any, rows: Sequence[Any], meanwhile: Callable[[], None] | None = None
    ) -> dict[str, Exception]:
        """Send each record on its own (``deliver``), each person's records in their order
        on one worker, several people at once (``per_person``); the failures by record id.
        A failure no record could get past (``run_wide``) is raised. (`meanwhile` is not
        called: the first records go on this thread, which has no time to spare.)"""
        deliver = functools.partial(self.deliver, ctx)  # type: ignore[attr-defined]  # the subclass's deliver, when it sends one at a time
        return per_person(rows, deliver, self.subject_id, self.record_id, in_flight(get_settings()))


def per_person(
    rows: Sequence[Row],
    deliver: Callable[[Row], object],
    person: Callable[[Row], object],
    record_id: Callable[[Row], str],
    workers: int,
    least: int = 1,
) -> dict[str, Exception]:
    """``deliver(row)`` for every row: one person's rows one after the other, in their
    order, on one worker thread (customer before appointment; cardholder, photo, card),
    up to `workers` people at once, as many as the answers' time needs (``Pace``: one at a
    time while they come at once). The HTTP layer's bucket paces every call to a
    processor, so `workers` only has to cover the answer time (``PSYNC_HTTP_IN_FLIGHT``).

    Returns the rows' own failures by record id, in the rows' order. A run-wide failure
    (auth, configuration) stops every worker before its next row and is raised once the
    calls on the wire have ended, as is any failure that is no record's own. Workers run in
    a copy of the caller's context: the batch's call journal sees their calls. ``deliver``
    runs on a worker thread: whatever it does with the batch's session or shared counts it
    does under the batch's lock (the session is not thread-safe).

    >>> seen = []
    >>> per_person([("a", 1), ("b", 1), ("a", 2)], seen.append, lambda r: r[0], str, 1)
    {}
    >>> seen
    [('a', 1), ('a', 2), ('b', 1)]
    """
    chains: dict[object, list[Row]] = defaultdict(list)
    for row in rows:
        chains[person(row)].append(row)
    failures: dict[str, Exception] = {}
    stop = threading.Event()
    raised: list[BaseException] = []
    pace = Pace(least, workers)  # one at a time while answers come at once

    def chain(own: list[Row]) -> None:
        for row in own:
            if stop.is_set():
                return
            try:
                with pace.slot():
                    deliver(row)
            except (ProcessorError, ValueError) as exc:
                if run_wide(exc):
                    raised.append(exc)
                    stop.set()
                    return
                failures[record_id(row)] = exc
            except BaseException:  # no record's own: the batch fails, nobody else starts
                stop.set()
                raise

    # On this thread while the answers come at once: handing each person to a pool thread
    # costs a thread switch per record and buys nothing then. The pool takes over after the
    # first person whose calls were slow enough to want company (the pace then decides how
    # many at once), not after three: every batch starts a new pace.
    pending = deque(chains.values())
    while pending and not stop.is_set() and (workers <= 1 or len(pending) <= 1 or _alone(pace)):
        chain(pending.popleft())
    if pending and not stop.is_set():
        with ThreadPoolExecutor(max_workers=min(workers, len(pending)), thread_name_prefix="psync-deliver") as pool:
            for future in [pool.submit(copy_context().run, chain, own) for own in pending]:
                future.result()
    if raised:
        raise raised[0]
    return {key: failures[key] for key in map(record_id, rows) if key in failures}


def _alone(pace: Pace) -> bool:
    """Whether the next person goes on this thread: the pace allows one at a time and the
    last person's calls came at once."""
    return pace.limit <= 1 and pace.last < pace.per_worker


def isolate(
    send: Callable[[list[Row]], R], rows: list[Row]
) -> tuple[list[tuple[list[Row], R]], list[tuple[Row, Exception]]]:
    """Send `rows` in one batch call; if the batch is refused for good (a 4xx other than
    auth, our own validation), send each half again, down to the record it was refused
    for: one bad record costs about 2·log2(n) more calls, and the others still go.

    A retriable failure (5xx, timeout, 429: the retry policy gave up) is the batch's, not
    a record's: every record of the batch gets it, without splitting. Returns
    ([(rows sent, answer), …], [(record, its failure), …]); raises a run-wide failure.

    >>> def send(rows):
    ...     if 13 in rows: raise ValueError("13 is refused")
    ...     return len(rows)
    >>> isolate(send, [11, 12, 13, 14])
    ([([11, 12], 2), ([14], 1)], [(13, ValueError('13 is refused'))])
    """
    try:
        return [(rows, send(rows))], []
    except (ProcessorError, ValueError) as exc:
        if run_wide(exc):
            raise
        if len(rows) == 1 or _retriable(exc):
            return [], [(row, exc) for row in rows]
    half = len(rows) // 2
    sent, failed = isolate(send, rows[:half])
    more_sent, more_failed = isolate(send, rows[half:])
    return sent + more_sent, failed + more_failed


@dataclass
class _Selection(Generic[Row]):
    rows: list[Row]
    after: int | None  # the cursor's position it was read at (None: a named run)
    last_seq: int | None  # of the records after the cursor (None: none, or a named run)
    # Written ahead already, by the batch before (``_write_next_ahead``): `rows` not read.
    covered: bool = False
    # The records after the cursor, counted but not read: the job writes them ahead in the
    # database (``Job.stream_bounds``).
    counted: int | None = None
    # The records from the retry queue it took: all step 2 may take from there (one queued
    # in between was not written ahead).
    retry: frozenset[str] = frozenset()
    # Whom the batch before left out of writing this one ahead (``_write_next_ahead``):
    # being erased, held back then.
    erasing: frozenset[uuid.UUID] = frozenset()
    paused: frozenset[uuid.UUID] = frozenset()


def _select(
    job: Job[Row],
    session: Session,
    limit: int,
    ids: Sequence[str] | None,
    upto: int | None = None,
    ahead: bool = False,
    retry_from: frozenset[str] | None = None,
) -> _Selection[Row]:
    """A named run's records, or the ones to retry first and then the stream after the
    cursor (up to seq `upto`: what an earlier selection of this batch wrote ahead; of the
    retry queue only what it took, `retry_from`); as the write-ahead needs them (`ahead`) or
    whole. The cursor is locked either way: a named run and the stream's next batch do not
    send the same record at once."""
    after = job.lock(session)  # locked until the transaction ends
    if ids is not None:
        return _Selection(job.by_ids(session, ids), None, None)
    retry = due_for_retry(session, job.name)
    if retry_from is not None:  # before the limit: one queued meanwhile must not push one out
        retry = [r for r in retry if r in retry_from]
    retry = retry[:limit]
    if ahead and not retry:
        cursor = get_cursor(session, job.cursor)
        if (cursor.ahead_after, cursor.ahead_count) == (after, limit) and cursor.ahead_through is not None:
            # The batch before wrote it, leaving out these.
            left_out = json.loads(cursor.ahead_left_out) if cursor.ahead_left_out else {}
            erasing, paused = (frozenset(map(uuid.UUID, left_out.get(k, ()))) for k in ("erasing", "paused"))
            return _Selection([], after, cursor.ahead_through, covered=True, erasing=erasing, paused=paused)
        if (bounds := job.stream_bounds(session, after, limit)) is not None:
            count, last_seq = bounds
            return _Selection([], after, last_seq, counted=count)
    rows = job.by_ids(session, retry) if retry else []
    fresh = job.select_ahead(session, after, limit) if ahead else job.select(session, after, limit)
    if upto is not None and fresh and job.seq(fresh[-1]) > upto:
        fresh = [r for r in fresh if job.seq(r) <= upto]
    # Nothing left up to `upto` (what was written ahead has gone since): the cursor may pass it.
    last = job.seq(fresh[-1]) if fresh else upto
    if rows:  # a record to retry that changed again since is taken once
        taken = {job.record_id(r) for r in rows}
        fresh = [r for r in fresh if job.record_id(r) not in taken]
    return _Selection(rows + fresh, after, last, retry=frozenset(retry))


def _write_ahead(session: Session, reaches: Iterable[Reach], now: datetime) -> int:
    """The reaches' "may hold" rows, one statement per processor; how many."""
    grouped: dict[str, dict[str, dict[uuid.UUID, str | None]]] = defaultdict(lambda: defaultdict(dict))
    for reach in reaches:
        grouped[reach.processor][reach.purpose].setdefault(reach.subject_id, reach.external_id)
    for processor, by_purpose in sorted(grouped.items()):
        record_may_hold_by_purpose(session, processor, by_purpose, now)
    return sum(len(subjects) for by_purpose in grouped.values() for subjects in by_purpose.values())


def _write_next_ahead(
    job: Job[Row], session: Session, last_seq: int, limit: int, now: datetime, events: list[AuditEvent]
) -> None:
    """Write the batch after this one ahead, in this batch's transaction, while its calls
    are on the wire; mark it on the cursor (``SyncCursor.ahead_*``), so the next batch's
    step 1, if it starts there with the same size, only locks its cursor. A short one (the
    stream's last) is written ahead too: the next batch then sends what it covers, and what
    comes after it is the batch after's (the next run's, in a sync that planned its batches).

    Registered before it leaves all the same: these rows commit with this batch, before
    the next batch sends anything; if this batch fails they roll back with it. A record
    that changes later gets a later place in the stream, past the mark, and is written
    ahead by the batch that sends it.

    Whoever is being erased or held back is left out, as in step 1, and named on the mark
    (``SyncCursor.ahead_left_out``): the next batch's step 2 holds them, even once the
    restriction is lifted (nothing of theirs was written ahead)."""
    bounds = job.stream_bounds(session, last_seq, limit)
    records, through = bounds if bounds is not None else (0, None)
    if bounds is not None and through is None:  # nothing follows (an incremental sync's only batch)
        return
    erasing = being_erased(session)
    paused = held_back(session) - erasing
    left_out: dict[str, list[str]] = {}
    if through is not None and not (erasing or paused):
        written = job.write_ahead_between(session, last_seq, through, now)
    else:
        rows = job.select_ahead(session, last_seq, limit)
        if not rows:
            return
        records, through = len(rows), job.seq(rows[-1])
        reaches = job.reaches(session, rows)
        for why, whom in (("erasing", erasing), ("paused", paused)):
            if found := {str(r.subject_id) for r in reaches if r.subject_id in whom}:
                left_out[why] = sorted(found)
        everyone = erasing | paused
        written = _write_ahead(session, [r for r in reaches if r.subject_id not in everyone], now)
    if written:
        events.append(decision(f"{job.name}.register_ahead", "may_hold", records=records, rows=written, batch="next"))
    cursor = get_cursor(session, job.cursor)
    cursor.ahead_after, cursor.ahead_through, cursor.ahead_count = last_seq, through, limit
    cursor.ahead_left_out = json.dumps(left_out) if left_out else None


def waiting(session: Session, job_name: str) -> int:
    """How many records of `job_name` its next batch takes besides the stream: those to try
    again, and about as many as the holds of people held back no more (``release_lifted``).
    For a job's plan: a run with neither and no change needs no batch."""
    return len(due_for_retry(session, job_name)) + len(lifted_holds(session, job_name, held_back(session)))


def run_wide(exc: Exception) -> bool:
    """Whether a failure is no record's own: auth refused, configuration missing."""
    if not isinstance(exc, ProcessorError):
        return False
    return exc.status in _RUN_WIDE or (exc.status is None and exc.operation == "configure")


def _retriable(exc: Exception) -> bool:
    """Worth another try on the next run: no answer, a 5xx, a 429 (the policy gave up)."""
    return isinstance(exc, ProcessorError) and (exc.outcome_unknown or exc.status == 429)


def run_batch(
    job: Job[Row], limit: int, ids: Sequence[str] | None = None, next_limit: int | None = None
) -> dict[str, int]:
    """Deliver one batch of `job` (the next `limit` records, or exactly `ids`); its counts.
    A job that writes the next batch ahead (``_write_next_ahead``) writes `next_limit`
    records (default `limit`): the size the next batch will ask for.

    See the module's text for the three steps. Raises only what no record could get past
    (auth, configuration); a record's own failure is parked and counted. Every call goes to
    the call journal as it is made (``flows.journal``): a batch that fails, or whose
    process is killed, before its commit has its calls audited all the same.
    """
    now = utcnow()
    # Each start-over follows another worker's progress (it moved the cursor), so this ends
    # with the stream; the bound only stops a worker that keeps losing to a busier one.
    for _ in range(_MOST_STARTS):
        journal.settle_now()  # what batches killed before their commit left
        with transaction() as session:
            # Who is held back is read under the cursor's lock (``_select`` takes it again);
            # the stream's batch then hands lifted holds to the retry queue it reads below.
            job.lock(session)
            paused_now = held_back(session)
            if ids is None:
                release_lifted(session, job.name, paused_now, now)
            ahead = _select(job, session, limit, ids, ahead=True)
            held = being_erased(session) | ahead.erasing
            paused = paused_now | ahead.paused
            after, through = ahead.after, ahead.last_seq
            if (
                ahead.counted is not None and after is not None and (held or paused)
            ):  # someone to leave out: look at each
                ahead = _Selection(job.select_ahead(session, after, limit), after, through)
            if ahead.counted is not None:
                records = ahead.counted
                written = 0
                if after is not None and through is not None:
                    written = job.write_ahead_between(session, after, through, now)
            else:
                records = len(ahead.rows)
                reaches = job.reaches(session, ahead.rows)
                if held or paused:
                    reaches = [r for r in reaches if r.subject_id not in held and r.subject_id not in paused]
                written = _write_ahead(session, reaches, now)
            if written:
                write_audit(
                    session, [decision(f"{job.name}.register_ahead", "may_hold", records=records, rows=written)]
                )
        if not ahead.rows and not ahead.covered and not ahead.counted:
            return {}
        counts = _send(job, limit, ids, ahead, held, paused, now, next_limit or limit)
        if counts is not None:
            return counts
        # Another worker delivered a batch in between: what is after the cursor now was not
        # written ahead by this one. Start over from the new position.
    log.info("%s: another worker delivered every batch this one wrote ahead; leaving the rest to it", job.name)
    return {}


def _send(
    job: Job[Row],
    limit: int,
    ids: Sequence[str] | None,
    ahead: _Selection[Row],
    held: set[uuid.UUID],
    paused: set[uuid.UUID],
    now: datetime,
    next_limit: int,
) -> dict[str, int] | None:
    """Step 2 and 3 in one transaction, its calls journaled; None if the cursor moved since
    the write-ahead. A failure rolls the data back, and the journal's calls go to the trail
    as a killed batch's would: once, with a row that says the batch ended before its commit.
    `held`, `paused`: whom step 1 wrote nothing ahead for (being erased, held back)."""
    try:
        with journal.journaled(job.name) as batch, transaction() as session:
            chosen = _select(job, session, limit, ids, upto=ahead.last_seq, retry_from=ahead.retry)
            moved = chosen.after != ahead.after
            counts = None if moved else _deliver(job, session, chosen, held, paused, now, batch, next_limit)
    except BaseException:
        job.clients.drain_calls()  # the journal holds them: audited once, from there
        journal.settle_now()
        raise
    journal.discard(batch)
    return counts


def _deliver(
    job: Job[Row],
    session: Session,
    chosen: _Selection[Row],
    held_ahead: set[uuid.UUID],
    paused_ahead: set[uuid.UUID],
    now: datetime,
    batch: str,
    next_limit: int,
) -> dict[str, int]:
    """Step 2 and 3 of ``run_batch``, in its second transaction. Held: whoever was being
    erased or held back when the batch wrote ahead (nothing of theirs was), or is now. The
    next `next_limit` records are written ahead meanwhile, if the job's calls leave time."""
    counts: Counter[str] = Counter()
    events: list[AuditEvent] = []
    rows = chosen.rows
    held = held_ahead | being_erased(session)
    paused_now = held_back(session)
    paused = paused_now | paused_ahead
    ctx = job.begin(session, rows)
    sending = rows
    waiting: list[tuple[str, uuid.UUID]] = []
    if held or paused:  # (most batches: nobody; then no record is looked at here)
        sending = []
        for row in rows:
            subject = job.subject_id(row)
            if subject in held:  # nothing to retry: the person is being erased
                counts["held_erasure_open"] += 1
                events.append(job.held(ctx, row))
            elif subject in paused and job.reaches(session, [row]):  # goes once the restriction is lifted
                waiting.append((job.record_id(row), subject))
                events.append(decision(f"{job.name}.restriction", "held", record=job.record_id(row)))
            else:
                sending.append(row)
        if waiting:
            counts["held_restricted"] += hold_back(session, job.name, waiting, now)
    meanwhile = None
    if chosen.last_seq is not None:
        meanwhile = functools.partial(_write_next_ahead, job, session, chosen.last_seq, next_limit, now, events)
    failures = job.deliver_many(ctx, sending, meanwhile)
    for record, exc in failures.items():
        if isinstance(exc, ProcessorError):
            retriable = _retriable(exc)
            events.append(_park(session, job, record, retriable, exc.processor, exc.operation, reason(exc), now))
            counts["to_retry" if retriable else "parked"] += 1
        else:  # our own validation or configuration, for this record
            events.append(_park(session, job, record, False, "", "validate", reason(exc), now))
            counts["parked"] += 1
    finished, job_events = job.finish(ctx)
    counts.update(finished)
    # Read only if the job has anything parked or to retry: the ids of a batch are many.
    resolve(session, job.name, (r for r in map(job.record_id, rows) if r not in failures), now)
    # Held for a restriction lifted since step 1 left them out (the lifting released the
    # holds it found then): to the retry queue now, after the resolving above, so the next
    # batch writes them ahead and sends them. This job's holds only: another job's are its
    # own batch's to release, under its cursor (two releases of one hold would insert its
    # retry item twice; on PostgreSQL, locking another job's hold here while that job's
    # batch waits for the audit head this batch holds would deadlock).
    for subject in {subject for _, subject in waiting} - paused_now:
        release(session, subject, now, job.name)
    if chosen.last_seq is not None:
        advance_cursor(session, job.cursor, chosen.last_seq)
    write_audit(
        session, [*call_events(job.clients.drain_calls()), *job_events, *events, journal.committed(job.name, batch)]
    )
    return dict(counts)


def _park(
    session: Session, job: Job, record: str, retriable: bool, processor: str, operation: str, why: str, now: datetime
) -> AuditEvent:
    item = park(
        session, job.name, record, retriable=retriable, processor=processor, operation=operation, reason=why, now=now
    )
    return decision(
        f"{job.name}.park", str(item.state), processor or None, detail=operation, record=record, attempts=item.attempts
    )


def fail_if_parked(job_name: str, since: datetime) -> None:
    """End the run Failed when it parked anything or left anything to retry: how many,
    which records and why (ids, processors, statuses only). A record a lifted restriction
    queued and nothing has tried yet is no failure."""
    with transaction() as session:
        items = list(
            session.exec(
                select(ParkedItem)
                .where(
                    ParkedItem.job == job_name,
                    ParkedItem.last_tried_at >= since,
                    col(ParkedItem.state).in_([ParkState.parked, ParkState.retry]),
                    ParkedItem.operation != RELEASED,
                )
                .order_by(col(ParkedItem.last_tried_at))
            )
        )
    if not items:
        return
    parked = [i for i in items if i.state == ParkState.parked]
    retry = [i for i in items if i.state == ParkState.retry]
    named = "; ".join(f"{i.record_id}: {i.reason}" for i in items[:_NAMED])
    more = f"; and {len(items) - _NAMED} more (psync parked list)" if len(items) > _NAMED else ""
    raise JobFailed(
        f"{job_name}: {len(parked)} record(s) parked, {len(retry)} to retry on the next run; "
        f"the others were delivered. {named}{more}"
    )


# for the operator (psync parked …) ----------------------------------------------------
def retry_parked(session: Session, item_id: str) -> ParkedItem:
    """Another try for a parked record: the job's next run takes it first. Audited."""
    item = get_item(session, item_id)
    retry_later(item)
    write_audit(
        session, [decision(f"{item.job}.park", "retry_requested", item.processor or None, record=item.record_id)]
    )
    return item


def drop_parked(session: Session, item_id: str, why: str, now: datetime) -> ParkedItem:
    """The operator decides a parked record is not to be delivered, with a reason. Audited."""
    item = get_item(session, item_id)
    drop(item, why, now)
    write_audit(
        session,
        [
            decision(
                f"{item.job}.park", "dropped", item.processor or None, record=item.record_id, reason=item.drop_reason
            )
        ],
    )
    return item
