"""The call journal: every call a delivery batch makes reaches the audit trail, even when the
process is killed before the batch commits.

A batch's calls are audited in the transaction that records what they did. A run killed
between a call and that commit (SIGKILL, a lost machine, the OOM killer) would take the
record of the call with it. So, while a batch delivers, each call is also appended to a
journal file of its own, as it is made (a line: processor, operation, status, attempts,
outcome, items; no personal data). The batch's commit carries an audit row
``<job>.batch committed batch=<id>``; the file is then deleted.

A file left behind belongs to a batch whose process ended before deleting it. The next
batch of any job (``settle``) takes every file no live process holds (each writer keeps an
exclusive ``flock`` on its file while it lives), and:

- if the trail has the batch's ``committed`` (or an earlier ``settle``'s) row: deletes it;
- otherwise: audits each call it holds (``recovered=batch-id``) and a row
  ``<job>.batch ended_before_commit batch=<id>``, commits, then deletes it.

So each call reaches the trail exactly once. The journal lives next to an SQLite database
(``<file>-calls/``) or under ``$XDG_STATE_HOME/psync/calls/<hash of the URL>/`` (default
``~/.local/state``; ``PSYNC_CALL_JOURNAL_DIR`` overrides both); each worker host settles its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from connectors.transport import CALL_JOURNAL, IN_FLIGHT, CallRecord
from core.settings import get_settings
from flows.common import call_events, decision, run_id, write_audit
from models.audit import AuditEntry
from models.db import transaction

_SUFFIX = ".calls.jsonl"
log = logging.getLogger(__name__)


def directory() -> Path:
    """Where this database's call journals are."""
    settings = get_settings()
    if settings.call_journal_dir:
        return Path(settings.call_journal_dir)
    url = settings.database_url
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///") + "-calls")
    # Not below the working directory: the workers of one host may run from different ones.
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "psync" / "calls" / hashlib.sha256(url.encode()).hexdigest()[:12]


@contextmanager
def journaled(job: str) -> Iterator[str]:
    """Journal every call made in this block (and in the worker threads it starts through
    ``flows.common``) to a file of its own; yields the batch id the commit must name
    (``committed``). The file stays until ``discard``: deleting it is the caller's, after
    its commit."""
    folder = directory()
    folder.mkdir(parents=True, exist_ok=True)
    batch = uuid.uuid4().hex
    lock = threading.Lock()
    hidden = folder / f".{batch}.new"  # not a journal yet: ``settle`` does not look at it
    # Unbuffered: each line is one write(2), in the OS's hands when ``write`` returns (what
    # a flush after a buffered write gave), so a killed process loses nothing written.
    with open(hidden, "ab", buffering=0) as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # released by the OS if this process dies
        # Named a journal only once locked: another worker's ``settle`` must never take a
        # live batch's journal for an abandoned one.
        hidden.rename(folder / f"{batch}{_SUFFIX}")
        line = _Lines(job)

        def write(call: CallRecord) -> None:
            data = line(call)
            with lock:  # calls come from worker threads too
                _write_all(file, data)

        _write_all(file, (json.dumps({"job": job, "run": run_id()}) + "\n").encode())
        token = CALL_JOURNAL.set(write)
        try:
            yield batch
        finally:
            CALL_JOURNAL.reset(token)


class _Lines:
    """A call's journal line: the JSON of ``{"job": ..., **vars(call)}``, as ``settle`` reads it.

    Two lines a call on the calling thread, so built without ``json.dumps`` of a dict each:
    the part that repeats (job, processor, operation) is encoded once per operation, the
    numbers are written as JSON writes them, the outcome (a handful of words) encoded once each.
    """

    def __init__(self, job: str):
        self.job = job
        self._heads: dict[tuple[str, str], str] = {}
        self._words: dict[str, str] = {}

    def __call__(self, call: CallRecord) -> bytes:
        head = self._heads.get((call.processor, call.operation))
        if head is None:
            fields = {"job": self.job, "processor": call.processor, "operation": call.operation}
            head = self._heads[(call.processor, call.operation)] = json.dumps(fields, separators=(",", ":"))[:-1]
        outcome = self._words.get(call.outcome)
        if outcome is None:
            outcome = self._words[call.outcome] = json.dumps(call.outcome)
        status = "null" if call.status is None else int(call.status)
        return f'{head},"status":{status},"attempts":{int(call.attempts)},"outcome":{outcome},"items":{int(call.items)}}}\n'.encode()


def _write_all(file, data: bytes) -> None:
    """All of `data` to an unbuffered file (a raw write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


def committed(job: str, batch: str):
    """The audit row a batch's commit carries, which tells ``settle`` its calls are in."""
    return decision(f"{job}.batch", "committed", batch=batch)


def discard(*batches: str) -> None:
    """Delete batches' journals: once their commit is done, or ``settle``'s."""
    folder = directory()
    for batch in batches:
        (folder / f"{batch}{_SUFFIX}").unlink(missing_ok=True)


def settle(session: Session, held: contextlib.ExitStack) -> list[str]:
    """Audit, in `session`, the calls of batches that ended before their commit (see the
    module's text); returns the batch ids settled, to ``discard`` once `session` committed.
    A journal another process holds is left alone; the ones taken stay locked until `held`
    closes, so no other worker settles them too before this commit."""
    folder = directory()
    if not folder.is_dir():
        return []
    for path in folder.glob(".*.new"):  # a process died between creating and naming one: no calls in it
        with contextlib.suppress(OSError), open(path, encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
    settled = []
    for path in sorted(folder.glob(f"*{_SUFFIX}")):
        batch = path.name.removesuffix(_SUFFIX)
        try:
            file = held.enter_context(open(path, encoding="utf-8"))
        except FileNotFoundError:
            continue  # settled by another worker meanwhile
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its batch is still running, or another worker is settling it
        if not path.exists():
            continue  # settled (and deleted) by another worker between the listing and the lock
        lines = [json.loads(line) for line in file if line.endswith("\n")]
        settled.append(batch)
        header = lines[0] if lines else {"job": "unknown"}
        job = header["job"]
        in_trail = session.exec(
            select(func.count())
            .select_from(AuditEntry)
            .where(
                AuditEntry.action == f"{job}.batch",
                col(AuditEntry.detail).startswith(f"batch={batch}"),
            )
        ).one()
        if in_trail:
            continue
        calls = _calls(lines[1:])
        events = [replace(e, detail=f"recovered={batch} {e.detail}".strip()) for e in call_events(calls)]
        ended = decision(f"{job}.batch", "ended_before_commit", batch=batch, calls=len(calls))
        write_audit(session, [*events, ended], flow_run_id=header.get("run"))  # the run that made them
    return settled


def _calls(lines: list[dict]) -> list[CallRecord]:
    """The calls of a journal: each ended one as recorded; each sent but not ended (the
    process died while it was on the wire, or just before) with outcome "unknown": it may
    have reached the processor."""
    ended: list[CallRecord] = []
    open_calls: Counter[tuple] = Counter()
    for line in lines:
        call = CallRecord(**{k: v for k, v in line.items() if k != "job"})
        key = (call.processor, call.operation, call.items)
        if call.outcome == IN_FLIGHT:
            open_calls[key] += 1
        else:
            open_calls[key] -= 1
            ended.append(call)
    unknown = [
        CallRecord(p, op, None, 1, "unknown", items) for (p, op, items), n in open_calls.items() for _ in range(n)
    ]
    return ended + unknown


def settle_now() -> None:
    """``settle`` in a transaction of its own, then ``discard``: before a batch, and after
    one failed. Its own transaction: it may write audit rows, and the audit head must never
    be taken before a cursor (a batch takes them in that order). A failure here is logged,
    not raised: the batch's own failure is the one to report, and the journal stays for the
    next batch to settle."""
    if not pending():
        return
    try:
        with contextlib.ExitStack() as held:
            with transaction() as session:
                settled = settle(session, held)
            discard(*settled)  # still locked: deleted before anyone else can take them
    except Exception:
        log.warning("call journal left for the next batch to settle", exc_info=True)


def pending() -> list[str]:
    """Batch ids of the journals waiting to be settled (for tests and ``psync``)."""
    folder = directory()
    return sorted(p.name.removesuffix(_SUFFIX) for p in folder.glob(f"*{_SUFFIX}")) if folder.is_dir() else []
