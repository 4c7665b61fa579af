"""What every flow shares: audit writing of calls, run ids, PII-free count artifacts, and
failures that read as one line."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import copy_context
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext
from prefect.runtime import flow_run
from prefect.states import Failed
from sqlmodel import Session

from connectors.transport import CallRecord, ProcessorError, calls_on_this_thread, redact
from connectors.transport import in_flight as transport_in_flight
from core.settings import get_settings
from flows import labels
from models.audit import Anchor, AuditEvent, append, append_anchor, current_anchor
from models.db import transaction

T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F", bound=Callable)


class JobFailed(RuntimeError):
    """A run that did its work but must show as Failed; the text is the whole reason.

    Names ids, processors and counts, never a person: it is the run's state message.
    """


# Whose failure messages may be shown: ours, which name settings, ids and counts (and a
# ProcessorError only names and numbers). Anything else (a KeyError, a pydantic error, a
# decode error) may quote the value it choked on, so only its type is shown.
_OUR_PACKAGES = ("connectors.", "flows.", "models.", "psync.")
MAX_REASON = 300


def _sayable(exc: BaseException) -> bool:
    return type(exc) in (ValueError, LookupError) or type(exc).__module__.startswith(_OUR_PACKAGES)


def reason(exc: BaseException) -> str:
    """One line that says why, safe for a state message and a log line.

    >>> reason(JobFailed("2 erasure(s) failed"))
    '2 erasure(s) failed'
    >>> reason(KeyError("erika@example.de"))
    'unexpected KeyError (the traceback is logged at DEBUG)'
    """
    if _sayable(exc):
        text = " ".join(redact(str(exc)).split())
        if text:
            return text[:MAX_REASON]
    return f"unexpected {type(exc).__name__} (the traceback is logged at DEBUG)"


class TaskFailed(Exception):
    """A task's failure, already said in one line; carries the original for the flow."""

    def __init__(self, why: str, original: BaseException):
        super().__init__(why)
        self.original = original

    def __reduce__(self):  # Prefect pickles a failed task's exception
        return type(self), (str(self), self.original)


# Set on an exception whose failure ``one_line_failure`` has said in one line.
_SAID = "_psync_said_in_one_line"


class _TracebackAtDebug(logging.Filter):
    """Prefect logs a failure with its traceback at ERROR: a failed task, and, for a run
    on a worker, once more as "Engine execution exited with unexpected exception". For a
    failure already said in one line that record goes to DEBUG (dropped unless the logger
    shows DEBUG): the traceback is there for whoever turns DEBUG on, not in the Logs tab."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not (isinstance(exc, TaskFailed) or getattr(exc, _SAID, False)):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_TracebackAtDebug())


# Every flow's result settings (``@flow(name=..., **NO_RESULTS)``). A flow returns counts,
# shown in its artifact and never read back from storage, so none is written: a result
# storage the operator sets as the server's default would otherwise receive every run's
# return value, and each run would ask the server for that default twice before it starts
# (two API calls of ~5 ms). The storage named is a file nothing can be written under.
NO_RESULTS: dict[str, Any] = {"persist_result": False, "result_storage": Path(os.devnull)}


def one_line_failure(fn: F) -> F:
    """Decorate a flow's or task's function (below ``@flow``/``@task``): a failure ends the
    run as Failed with a one-line reason (``reason``), its traceback logged at DEBUG.

    Prefect would log the exception with its traceback at ERROR, once per task and again
    per flow, and put the exception's text in the state; the traceback is no help to the
    officer reading the Logs tab, and any text beyond ours may quote a value. In a task the
    failure is raised again as ``TaskFailed`` (Prefect logs its line once, without the
    traceback); the flow logs the reason once at ERROR and ends Failed with it as its state
    message. The original exception travels as the Failed state's data, so a caller of the
    flow function (the CLI, a test) still gets it raised; Prefect's own records of it with a
    traceback go to DEBUG (``_TracebackAtDebug``).

    Example::

        @flow(name="push-bookings")
        @one_line_failure
        def push_bookings(...): ...
    """

    @functools.wraps(fn)
    def run(*args, **kwargs):
        in_task = TaskRunContext.get() is not None
        anchored = False
        try:
            result = fn(*args, **kwargs)
            if not in_task:  # a flow run ends: its audit rows are vouched for outside the database
                anchored = True
                anchor_audit()
            return result
        except Exception as exc:
            original = exc.original if isinstance(exc, TaskFailed) else exc
            logger = get_run_logger()
            if original is exc:
                logger.debug("traceback of the failure", exc_info=True)
            why = reason(original)
            if in_task:
                raise TaskFailed(why, original) from None
            if anchored:  # the work succeeded; writing the anchor did not
                why = f"audit anchor not written: {why}"
            logger.error(why)
            try:
                setattr(original, _SAID, True)
            except AttributeError:  # an exception type without a __dict__: left as Prefect logs it
                pass
            if not anchored:  # a failed run may have written audit rows too
                try:
                    anchor_audit()
                except Exception as anchor_exc:  # noqa: BLE001 - the run's own failure is the one to show
                    logger.error("audit anchor not written: %s", reason(anchor_exc))
            return Failed(data=original, message=why)

    # Prefect builds its parameter model from the signature and resolves string annotations
    # (``from __future__ import annotations``) in the wrapper's module: hand it the
    # signature resolved in the flow's own module, so its names (uuid, Channel, …) are found.
    run.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]  # read by inspect
    return run  # type: ignore[return-value]  # functools.wraps keeps the docstring Prefect reads


def anchor_audit() -> None:
    """Write the audit trail's head to the configured anchor(s): a JSON line appended to
    ``PSYNC_AUDIT_ANCHOR``, a Prefect artifact ``audit-anchor`` with
    ``PSYNC_AUDIT_ANCHOR_ARTIFACT``; nothing when neither is set. Once per flow run
    (``one_line_failure``), whether it succeeded or failed."""
    settings = get_settings()
    if settings.audit_anchor is None and not settings.audit_anchor_artifact:
        return
    with transaction() as session:
        anchor = current_anchor(session, settings.hmac_key(), run_id())
    if settings.audit_anchor is not None:
        append_anchor(settings.audit_anchor, anchor)
    if settings.audit_anchor_artifact:
        # Counts and hashes only: nothing personal.
        create_markdown_artifact(
            key=ANCHOR_ARTIFACT,
            markdown=f"```json\n{anchor.to_json()}\n```",
            description="Audit trail head at the end of this run (rows, last hash, time)",
        )


ANCHOR_ARTIFACT = "audit-anchor"


def artifact_anchor(key: bytes, look_back: int = 20) -> Anchor | None:
    """The anchor vouching for the most rows among the newest `look_back` ``audit-anchor``
    artifacts (None: none yet). ValueError when one is not an anchor sealed with `key`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ANCHOR_ARTIFACT])),
            sort=ArtifactSort.CREATED_DESC,
            limit=look_back,
        )
    best = None
    for artifact in artifacts:
        text = str(artifact.data or "").removeprefix("```json").removesuffix("```").strip()
        anchor = Anchor.from_json(text)
        if not anchor.valid(key):
            raise ValueError("an audit-anchor artifact is not sealed with this key")
        if best is None or anchor.rows > best.rows:
            best = anchor
    return best


def run_id() -> str | None:
    """The current Prefect flow run's id (None outside a flow run)."""
    value = flow_run.id
    return str(value) if value else None


def call_events(calls: Iterable[CallRecord]) -> list[AuditEvent]:
    """One audit event per call made to a processor."""
    return [
        AuditEvent(
            action=f"call.{c.operation}",
            outcome=c.outcome,
            processor=c.processor,
            attempts=c.attempts,
            http_status=c.status,
            detail=f"items={c.items}" if c.items else "",
        )
        for c in calls
    ]


def decision(
    action: str,
    outcome: str,
    processor: str | None = None,
    subject: str | None = None,
    detail: str = "",
    status: int | None = None,
    **ids: object,
) -> AuditEvent:
    """The audit event of one decision or outcome: what (`action`, `outcome`), where
    (`processor`), about whom (`subject`: a pseudonym, never an identifier), the processor's
    answer (`status`), and record ids (never personal) as ``key=value`` before `detail`.
    Every flow builds its audit events here.

    >>> decision("booking.push", "sent", "timify", "ab12", booking="B-1", channel="video").detail
    'booking=B-1 channel=video'
    """
    if ids:  # (a push decides for 100,000 receivers in a row: no joining without ids)
        detail = " ".join([*(f"{key}={value}" for key, value in ids.items()), detail]).strip()
    return AuditEvent(action, outcome, processor, subject, None, status, detail)


def write_audit(session: Session, events: Iterable[AuditEvent], flow_run_id: str | None = None) -> int:
    """Append to the audit trail under the current flow run (or `flow_run_id`: the run the
    events belong to, when another run writes them), using the configured key."""
    return append(session, get_settings().hmac_key(), events, flow_run_id=flow_run_id or run_id())


class CallSource(Protocol):
    """What keeps a run's calls for the audit: an ``HttpClient``, or a job's set of them."""

    def drain_calls(self) -> list[CallRecord]: ...


@contextmanager
def audit_failure(http: CallSource, action: str) -> Iterator[None]:
    """Wrap a task's transaction: if a processor call fails, the data work rolls back but
    the calls made and the failure still reach the audit trail, in a transaction of their
    own opened only after the failed one has ended (SQLite allows one writer)."""
    try:
        yield
    except ProcessorError as exc:
        failure = AuditEvent(
            action,
            "failed",
            exc.processor,
            attempts=exc.attempts,
            http_status=exc.status,
            detail=f"operation={exc.operation}",
        )
        with transaction() as session:
            write_audit(session, [*call_events(http.drain_calls()), failure])
        raise


def counts_artifact(flow_key: str, title: str, counts: Mapping[str, int]) -> None:
    """A table artifact of counts only: no identifiers, nothing personal.

    One row per count, labelled in German and English (``flows.labels``): every count the
    flow always reports, in its order, 0 where none occurred; then any other count present,
    an unknown one under its own key, so nothing is hidden.
    """
    create_table_artifact(
        table=labels.table(flow_key, counts),
        key=flow_key,
        description=f"# {title}\n\n{labels.COUNTS_ONLY}",
    )


def tally(results: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for result in results:
        total.update(result)
    return dict(total)


class Pace:
    """How many units of calls (a record's calls, one batch call) a pool keeps in flight:
    as many as waiting for the answers needs, from `least` up to `most`.

    More calls in flight only help while the workers wait for answers; when the processor
    answers at once (the sandbox on this machine), extra threads only fight over the one
    interpreter lock with the thread that does the database work, and a batch gets slower.
    So the pool starts at `least` and allows one worker more for every `per_worker` seconds
    a call of the recent units took (a unit's wall time over the requests it sent; the
    median of the last five, so one slow answer, a retry's wait, does not open it): 100 ms
    answers open it to 7, answers in a few milliseconds keep it at `least`. Per call, not
    per unit: a student-ID order's four quick calls are no reason for a second worker.

    >>> pace = Pace(least=1, most=8)
    >>> pace.observe(0.5)  # one slow answer
    >>> pace.limit
    1
    >>> for _ in range(3):
    ...     pace.observe(0.1)  # calls answered after 100 ms
    >>> pace.limit
    7
    >>> pace = Pace(least=1, most=8)
    >>> pace.observe(0.1, calls=4)  # one order's four calls, 100 ms each
    >>> pace.limit
    7
    """

    def __init__(self, least: int, most: int, per_worker: float = 0.015):
        self.least, self.most, self.per_worker = max(1, min(least, most)), max(1, most), per_worker
        self.limit = self.least
        self.last = 0.0  # seconds per call of the latest unit
        self._recent: deque[float] = deque(maxlen=5)
        self._active = 0
        self._line: deque[object] = deque()  # who waits for a place, in order of asking
        self._changed = threading.Condition()

    def observe(self, seconds: float, calls: int = 1) -> None:
        """A unit's `calls` took `seconds` each (wall): adjust how many may be in flight.

        Each call counts as one observation: the first student-ID order's four calls
        after 100 ms open the pool at once, where counting the order once kept every batch
        at one call in flight for its first four orders (1.6 s at a tenth of the rate).
        """
        with self._changed:
            self.last = seconds
            self._recent.extend([seconds] * max(1, min(calls, self._recent.maxlen or 1)))
            typical = sorted(self._recent)[len(self._recent) // 2] if len(self._recent) >= 3 else 0.0
            limit = max(self.least, min(self.most, 1 + int(typical / self.per_worker)))
            if limit != self.limit:
                self.limit = limit
                self._changed.notify_all()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the `limit` places for a unit; its wall time is observed."""
        # First come, first served: a worker that has just finished a unit takes the next
        # one from the pool and would otherwise get the freed place before a unit that has
        # waited for it, again and again. The caller takes the answers in order, so one unit
        # passed over held back the recording of all that came after it (a newsletter batch's
        # register waves then waited for the batch's last call).
        with self._changed:
            me = object()
            self._line.append(me)
            while self._line[0] is not me or self._active >= self.limit:
                self._changed.wait()
            self._line.popleft()
            self._active += 1
            self._changed.notify_all()  # the next in line may have a place too
        started, calls = time.perf_counter(), calls_on_this_thread()
        try:
            yield
        finally:
            made = max(1, calls_on_this_thread() - calls)
            self.observe((time.perf_counter() - started) / made, made)
            with self._changed:
                self._active -= 1
                self._changed.notify_all()

    def wrap(self, call: Callable[[], T]) -> Callable[[], T]:
        def paced() -> T:
            with self.slot():
                return call()

        return paced


@contextmanager
def overlapped(calls: Iterable[Callable[[], T]], in_flight: int | None = None, least: int = 2) -> Iterator[Iterator[T]]:
    """Run processor calls from worker threads, `least` to `in_flight` at a time (default
    ``PSYNC_HTTP_IN_FLIGHT``; as many as the answers' time needs: ``Pace``; the processor's
    token bucket paces the calls), while the caller works.

    Yields an iterator of the calls' results, in the calls' order. Every call is queued at
    once, so the workers keep the processor busy while the caller records what the earlier
    calls answered: HTTP waits and database work overlap. The database work stays in the
    caller's thread (it owns the transaction; SQLite has one writer). A call's exception is
    raised where its result is taken. On leaving the block, calls not yet started are
    dropped and running ones are awaited, so the client's call log is complete before anyone
    audits it.

    Example::

        with overlapped(partial(client.upsert, gid, name, b) for b in batches) as answers:
            for batch, answer in zip(batches, answers):
                record(session, batch, answer)
    """
    pace = Pace(least, in_flight or transport_in_flight(get_settings()))
    with ThreadPoolExecutor(max_workers=pace.most, thread_name_prefix="psync-http") as pool:
        pending: deque[Future[T]] = deque(pool.submit(copy_context().run, pace.wrap(call)) for call in calls)

        def results() -> Iterator[T]:
            while pending:
                yield pending.popleft().result()

        try:
            yield results()
        finally:
            for future in pending:
                future.cancel()


def concurrently(
    call: Callable[[T], R], items: Sequence[T], workers: int | None = None, least: int = 4
) -> list[R | ProcessorError]:
    """``call(item)`` for every item, `least` to `workers` at a time (default
    ``PSYNC_HTTP_IN_FLIGHT``; as many as the answers' time needs: ``Pace``); results in the
    items' order.

    A processor error is returned in its item's place, so one failed call does not hide the
    outcome of the others; any other exception is raised. Rate limiting and retries stay in
    the HTTP layer, which is thread-safe.
    """
    pace = Pace(least, workers or transport_in_flight(get_settings()))

    def guarded(item: T) -> R | ProcessorError:
        try:
            with pace.slot():
                return call(item)
        except ProcessorError as exc:
            return exc

    if len(items) <= 1 or pace.most <= 1:
        return [guarded(item) for item in items]
    with ThreadPoolExecutor(max_workers=pace.most, thread_name_prefix="psync-http") as pool:
        # In the caller's context: a call journal set there (flows.journal) sees these calls.
        futures = [pool.submit(copy_context().run, guarded, item) for item in items]
        return [future.result() for future in futures]
