"""What every flow shares: audit writing of calls, run ids, PII-free count artifacts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from sqlmodel import Session

from connectors.transport import CallRecord, HttpClient, ProcessorError
from models.audit import AuditEvent, append
from models.db import transaction
from psync.settings import get_settings


def run_id() -> str | None:
    """The current Prefect flow run's id (None outside a flow run)."""
    value = flow_run.id
    return str(value) if value else None


def call_events(calls: Iterable[CallRecord]) -> list[AuditEvent]:
    """One audit event per call made to a processor."""
    return [
        AuditEvent(
            action=f"call.{c.operation}", outcome=c.outcome, processor=c.processor,
            attempts=c.attempts, http_status=c.status,
            detail=f"items={c.items}" if c.items else "",
        )  # fmt: skip
        for c in calls
    ]


def write_audit(session: Session, events: Iterable[AuditEvent]) -> int:
    """Append to the audit trail under the current flow run, using the configured key."""
    return append(session, get_settings().hmac_key(), events, flow_run_id=run_id())


@contextmanager
def audit_failure(http: HttpClient, action: str) -> Iterator[None]:
    """Wrap a task's transaction: if a processor call fails, the data work rolls back but
    the calls made and the failure still reach the audit trail, in a transaction of their
    own opened only after the failed one has ended (SQLite allows one writer)."""
    try:
        yield
    except ProcessorError as exc:
        failure = AuditEvent(
            action, "failed", exc.processor, attempts=exc.attempts, http_status=exc.status,
            detail=f"operation={exc.operation}",
        )  # fmt: skip
        with transaction() as session:
            write_audit(session, [*call_events(http.drain_calls()), failure])
        raise


def counts_artifact(flow_key: str, title: str, counts: Mapping[str, int]) -> None:
    """A table artifact of counts only: no identifiers, nothing personal."""
    rows = [{"what": name, "count": value} for name, value in sorted(counts.items())]
    create_table_artifact(table=rows, key=flow_key, description=f"# {title}\nCounts only.")


def tally(results: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for result in results:
        total.update(result)
    return dict(total)
