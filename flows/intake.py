"""Intake as the callers use it: ``intake.lines`` applies the lines, this writes their audit
events through the one audit writer, in the same transaction."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from pathlib import Path

from sqlmodel import Session

from flows.common import write_audit
from intake.lines import LineResult, apply_lines


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
