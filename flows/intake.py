"""Intake as the callers use it: ``intake.lines`` validates and applies the lines; this writes
their audit events through the one audit writer (``flows.common.write_audit``), in the same
transaction as what they record.

``intake_lines`` does a batch in the caller's transaction (the HTTP door, tests, demos);
``import_lines`` does a file of any size, a chunk at a time, each chunk its own transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from sqlmodel import Session

from core.heap import collector_paused
from flows.common import write_audit
from intake.lines import (
    CHUNK,
    CHUNK_DOCUMENT_BYTES,
    Applier,
    LineResult,
    Parsed,
    Refused,
    apply_lines,
    chunked,
    parse_lines,
    retry_order,
    validation_context,
)
from models.db import checkpoint, transaction

# SQLite's page cache for a chunk's transaction (``models.db.transaction``): the dirty index
# pages of 5,000 consent lines, without spilling them to the WAL before the commit.
CHUNK_CACHE_MB = 64


def intake_lines(
    session: Session,
    key: bytes,
    lines: Iterable[str | bytes],
    now: datetime,
    service_points: Collection[str] = (),
    base_dir: Path | None = None,
    document_key: bytes | None = None,
    max_document_bytes: int = 10 * 1024 * 1024,
) -> list[LineResult]:
    """Validate and store every line and write their audit rows; one result per non-blank
    line. No commit: all of it in the caller's transaction (``intake.lines.apply_lines``)."""
    applied = apply_lines(
        session,
        key,
        lines,
        now,
        service_points=service_points,
        base_dir=base_dir,
        document_key=document_key,
        max_document_bytes=max_document_bytes,
    )
    write_audit(session, applied.audit)
    return applied.results


def import_lines(
    key: bytes,
    lines: Iterable[str | bytes],
    now: datetime,
    service_points: Collection[str] = (),
    base_dir: Path | None = None,
    document_key: bytes | None = None,
    max_document_bytes: int = 10 * 1024 * 1024,
    chunk_lines: int = CHUNK,
    chunk_bytes: int = CHUNK_DOCUMENT_BYTES,
    url: str | None = None,
) -> Iterator[list[LineResult]]:
    """Validate and store `lines` read as they come, a chunk at a time: each chunk (at most
    `chunk_lines` lines, fewer once its documents reach `chunk_bytes`) is stored with its
    audit rows in a transaction of its own, and its results are yielded only once that has
    committed. So memory stays flat whatever the file's size, and a crash loses nothing that
    was reported stored: what had committed is there, and importing the file again reports
    it duplicate and stores the rest.

    Results come chunk by chunk, each sorted by line number; a line naming what is not known
    yet (a confirmation above its sign-up) is tried again after the whole file and reported
    then, in the last chunks.
    """
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be at least 1")
    context = validation_context(now, service_points, base_dir, max_document_bytes)
    later: list[Parsed] = []
    chunks = chunked(parse_lines(lines, context), chunk_lines, chunk_bytes)
    while True:
        # Reading, validating and storing a chunk run with the cycle collector paused; the
        # caller's code between chunks (the yield) runs with it as it was. The chunk's events
        # and rows are gone (``_store``'s locals, by reference count) before it resumes: what
        # is still alive then, the collector walks at its first allocation (10-20 ms a chunk
        # for the 30,000 objects of a chunk of 5,000 consent lines; ``Applier.close``).
        with collector_paused():
            chunk = next(chunks, None)
            if chunk is None:
                break
            results, deferred = _store(chunk, key, document_key, url, defer=True)
            later += deferred
            chunk.clear()  # so also the list chunked() holds until its next step
        yield results
    ordered = retry_order(later)
    for start in range(0, len(ordered), chunk_lines):
        with collector_paused():
            results, _ = _store(ordered[start : start + chunk_lines], key, document_key, url, defer=False)
        yield results
    # The file's pages into the database file before the caller goes on: a job right after
    # the intake would otherwise share its first commits with that checkpoint (70 ms of a
    # 0.3 s incremental newsletter sync).
    checkpoint(url)


def _store(
    chunk: Sequence[LineResult | Parsed | Refused],
    key: bytes,
    document_key: bytes | None,
    url: str | None,
    defer: bool,
) -> tuple[list[LineResult], list[Parsed]]:
    """Store the events of `chunk` with their audit rows in a transaction of their own: its
    results (the rejections it brings included) by line number, and (with `defer`) the lines
    naming what is not known yet, to be tried again after the file."""
    results = [item for item in chunk if isinstance(item, LineResult)]
    events = [item for item in chunk if not isinstance(item, LineResult)]  # Parsed and Refused
    if not events:
        return results, []
    with transaction(url, cache_mb=CHUNK_CACHE_MB) as session:
        applier = Applier(session, key, document_key)
        applied = applier.apply(events, defer=defer)
        write_audit(session, applied.audit)
        applier.close()
    return sorted(results + applied.results, key=lambda r: r.line), applied.later
