"""Intake as the callers use it: ``intake.lines`` validates and applies the lines; this writes
their audit events through the one audit writer (``flows.common.write_audit``), in the same
transaction as what they record.

``intake_lines`` does a batch in the caller's transaction (the HTTP door, tests, demos);
``import_lines`` does a file of any size, a chunk at a time, each chunk its own transaction.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from sqlmodel import Session

from core.heap import collector_paused
from flows.common import write_audit
from intake.documents import resolve_document
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


class Uploads:
    """The documents a file's order lines name, and what became of those lines: the plaintext
    uploads the website left next to the file (ID copies, photos) are personal data that an
    erasure here cannot reach, so ``psync intake --remove-documents`` removes them once the
    file is in.

    A document goes once every line naming it is in: stored (now encrypted in the database),
    a duplicate (stored before), or ignored because its person was erased after the order's
    time. One named by a rejected line stays, for the line to be fixed and imported again,
    also where the line failed validation: the names are read from each line's own JSON as
    it passes (``watch``), before and whatever the validation. Only paths inside the file's
    folder are ever touched (``resolve_document``).

    Example::

        uploads = Uploads(path.parent)
        for results in import_lines(key, uploads.watch(lines), now, base_dir=path.parent):
            uploads.settle(results)
        removed, failed = uploads.remove()
    """

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self._named: dict[int, list[Path]] = {}  # line number -> its documents, until its result
        self._kept: set[Path] = set()
        self._done: set[Path] = set()

    def watch(self, lines: Iterable[str | bytes]) -> Iterator[str | bytes]:
        """`lines` unchanged, numbered as intake numbers them; the documents each names noted."""
        for number, raw in enumerate(lines, start=1):
            # Only a line that may name documents is read twice (an order; few in a file).
            if b'"documents"' in raw if isinstance(raw, bytes) else '"documents"' in raw:
                self._note(number, raw)
            yield raw

    def _note(self, number: int, raw: str | bytes) -> None:
        try:
            documents = json.loads(raw).get("documents")
        except (ValueError, RecursionError, AttributeError):
            return  # not an object: rejected, and naming nothing we could find
        if not isinstance(documents, dict):
            return
        paths = []
        for relative in documents.values():
            try:
                paths.append(resolve_document(self.base_dir, relative))
            except (ValueError, TypeError):
                continue  # not a path inside the folder: never ours to remove
        self._named[number] = paths

    def settle(self, results: Iterable[LineResult]) -> None:
        """What became of lines (committed): their documents to remove, or to keep."""
        for result in results:
            paths = self._named.pop(result.line, None)
            if paths:
                (self._kept if result.outcome == "rejected" else self._done).update(paths)

    @property
    def left(self) -> int:
        """Documents of lines that are in, not removed (yet)."""
        return len(self._done - self._kept)

    def remove(self) -> tuple[int, int]:
        """Remove the documents of lines that are in and named by no rejected line: (removed,
        could not be removed). One gone already counts as neither."""
        removed = failed = 0
        for path in sorted(self._done - self._kept):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
            except OSError:  # a folder, or no permission; the caller says how many
                failed += 1
        self._done.clear()
        return removed, failed
