"""enforce-retention and ``psync retention check``: every deletion rule on a settable clock,
boundaries included (the day before the due day keeps, the due day deletes)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from prefect import flow as prefect_flow
from sqlmodel import select
from typer.testing import CliRunner

from core.settings import get_settings
from flows import bookings, retention
from flows.common import JobFailed
from flows.intake import intake_lines
from models.audit import AuditEntry, verify
from models.bookings import Booking
from models.db import transaction
from models.recipients import Recipient
from models.subjects import DataSubject
from psync.cli import app
from psync.sandbox_env import SERVICE_POINTS

from support import TEST_KEY, sandbox_state

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = TEST_KEY.encode()
NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
# The last appointment ends 2026-02-03 14:35 Berlin: day 0 of the TIMIFY rule (R06).
LAST_DAY = date(2026, 2, 3)


def booking(booking_id: str, start: str, email: str = "rita.retention@example.de") -> str:
    return json.dumps(
        {
            "type": "booking.request",
            "booking_id": booking_id,
            "channel": "branch",
            "service_point": "sp-berlin",
            "start": start,
            "duration_minutes": 30,
            "salutation": "Frau",
            "first_name": "Rita",
            "last_name": "Retention",
            "phone": "+49 170 7654321",
            "email": email,
            "birth_date": "1980-05-17",
            "at": NOW.isoformat(),
        }
    )


def signup(email: str, at: datetime) -> str:
    return json.dumps(
        {
            "type": "consent.signup",
            "list": "newsletter",
            "email": email,
            "salutation": "Frau",
            "first_name": "Nie",
            "last_name": "Bestaetigt",
            "ip": "192.0.2.1",
            "at": at.isoformat(),
            "source": "https://example.de/nl",
            "policy_version": "2026-01",
        }
    )


def take_in(*lines: str, now: datetime = NOW) -> None:
    with transaction() as session:
        results = intake_lines(session, KEY, lines, now=now, service_points=SERVICE_POINTS)
    assert {r.outcome for r in results} <= {"stored"}, results


def timify(url) -> dict:
    return sandbox_state(url)["timify"]


def test_a_timify_customer_goes_the_configured_days_after_the_last_appointment_verified(against_sandbox):
    take_in(
        booking("B-old", "2026-02-02T10:00:00+01:00"),
        booking("B-last", "2026-02-03T14:05:00+01:00"),
        booking("B-other", "2026-03-20T10:00:00+01:00", email="otto.other@example.de"),
    )
    bookings.push_bookings()
    assert len(timify(against_sandbox)["customers"]) == 2

    # Day 29 after the last appointment: kept, and not yet overdue.
    assert retention.enforce_retention(as_of=LAST_DAY + timedelta(days=29))["retention_due"] == 0
    assert len(timify(against_sandbox)["customers"]) == 2
    # Day 30: deleted at TIMIFY, customer and both appointments, read back as absent.
    counts = retention.enforce_retention(as_of=LAST_DAY + timedelta(days=30))
    assert counts["retention_due"] == counts["retention_deleted"] == 1 and counts["retention_overdue"] == 0
    state = timify(against_sandbox)
    assert len(state["customers"]) == 1
    assert {a["externalId"] for a in state["appointments"].values()} == {"B-other"}
    with transaction() as session:
        rows = session.exec(select(Recipient).where(Recipient.processor == "timify")).all()
        assert len(rows) == 2 and sum(r.removed_at is not None for r in rows) == 1
        done = session.exec(select(Booking).where(Booking.booking_ref == "B-last")).one()
        assert done.timify_deleted_at is not None
        actions = {(e.action, e.processor, e.outcome) for e in session.exec(select(AuditEntry))}
        assert ("retention.delete", "timify", "deleted") in actions
        assert verify(session, KEY).ok
    # Nothing of the person in the audit trail's details.
    with transaction() as session:
        blob = json.dumps([e.detail for e in session.exec(select(AuditEntry))])
    assert "rita" not in blob.lower()
    # Run again: nothing more is due, nothing is called.
    assert retention.enforce_retention(as_of=LAST_DAY + timedelta(days=31))["retention_due"] == 0


def test_the_period_is_a_setting(against_sandbox, monkeypatch):
    from core.settings import get_settings

    monkeypatch.setenv("PSYNC_TIMIFY_CUSTOMER_RETENTION_DAYS", "7")
    get_settings.cache_clear()
    take_in(booking("B-last", "2026-02-03T14:05:00+01:00"))
    bookings.push_bookings()
    assert retention.enforce_retention(as_of=LAST_DAY + timedelta(days=6))["retention_due"] == 0
    assert retention.enforce_retention(as_of=LAST_DAY + timedelta(days=7))["retention_deleted"] == 1
    assert timify(against_sandbox)["customers"] == {}


def test_overdue_is_reported_by_rule_from_the_day_after_the_due_day(settings):
    signed = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # due on 2026-03-31 (30 days, Berlin)
    take_in(signup("nie.bestaetigt@example.de", signed), now=signed + timedelta(hours=1))
    runner = CliRunner()
    assert retention.overdue(date(2026, 3, 31), settings) == {}  # the due day: the job deletes today
    assert retention.overdue(date(2026, 4, 1), settings) == {"R01": 1}
    ok = runner.invoke(app, ["retention", "check", "--as-of", "2026-03-31"])
    assert ok.exit_code == 0, ok.output
    late = runner.invoke(app, ["retention", "check", "--as-of", "2026-04-01"])
    assert late.exit_code == 1 and "R01" in late.output and "nie.bestaetigt" not in late.output
    bad = runner.invoke(app, ["retention", "check", "--as-of", "gestern"])
    assert bad.exit_code == 2


def test_the_flow_runs_each_rules_own_purge_so_nothing_is_left_overdue(settings):
    signed = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # due on 2026-03-31
    take_in(signup("nie.bestaetigt@example.de", signed), now=signed + timedelta(hours=1))
    kept = retention.enforce_retention(as_of=date(2026, 3, 30))  # the day before: kept
    assert not kept.get("expired") and retention.overdue(date(2026, 3, 31), settings) == {}
    counts = retention.enforce_retention(as_of=date(2026, 3, 31))
    assert counts["expired"] == 1 and counts["retention_overdue"] == 0
    with transaction() as session:
        assert session.exec(select(DataSubject.email).where(DataSubject.email != None)).all() == []  # noqa: E711
    assert retention.overdue(date(2026, 4, 30), settings) == {}


def test_a_purges_counts_arrive_when_the_server_answers_its_final_state_with_its_own_copy(settings, monkeypatch):
    """A retried state request is answered with the server's copy of the state, which holds
    no result (none is persisted): the purge's counts still reach the retention flow."""
    import prefect.flow_engine

    real = prefect.flow_engine.propose_state_sync
    answered = []

    def servers_copy(*args, **kwargs):
        state = real(*args, **kwargs)
        if not state.is_completed():
            return state
        answered.append(state.name)
        return state.model_copy(update={"data": None})

    monkeypatch.setattr(prefect.flow_engine, "propose_state_sync", servers_copy)
    signed = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    take_in(signup("nie.bestaetigt@example.de", signed), now=signed + timedelta(hours=1))
    counts = retention.enforce_retention(as_of=date(2026, 3, 31))
    assert counts["expired"] == 1 and counts["retention_overdue"] == 0
    assert len(answered) == len(retention.PURGES) + 1  # every purge and the flow itself


def test_the_flow_fails_naming_rule_ids_when_something_is_overdue(settings, monkeypatch):
    signed = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    take_in(signup("nie.bestaetigt@example.de", signed), now=signed + timedelta(hours=1))
    monkeypatch.setattr(retention, "PURGES", {})  # as if the opt-in expiry had not run
    with pytest.raises(JobFailed, match=r"overdue by rule: R01: 1"):
        retention.enforce_retention(as_of=date(2026, 4, 1))


def test_a_purge_that_fails_is_named_and_the_others_still_run(settings, monkeypatch):
    signed = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    take_in(signup("nie.bestaetigt@example.de", signed), now=signed + timedelta(hours=1))
    ran = []

    @prefect_flow(name="purge-that-fails")
    def failing(as_of):
        raise RuntimeError("processor down")

    real = retention.get_flow

    def flows(name):
        ran.append(name)
        return failing if name == "purge-video-chat-data" else real(name)

    monkeypatch.setattr(retention, "get_flow", flows)
    with pytest.raises(JobFailed, match=r"overdue by rule: none; failed: purge-video-chat-data"):
        retention.enforce_retention(as_of=date(2026, 4, 1))
    assert sorted(ran) == sorted(retention.PURGES)  # the sign-up was expired all the same
    assert retention.overdue(date(2026, 4, 1), settings) == {}


def test_each_run_publishes_the_deletion_concept_with_the_periods_in_force(settings, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from core import catalogue

    monkeypatch.setenv("PSYNC_TIMIFY_CUSTOMER_RETENTION_DAYS", "45")
    get_settings.cache_clear()
    state = retention.enforce_retention(as_of=date(2026, 3, 1), return_state=True)
    assert state.is_completed()
    run = state.state_details.flow_run_id
    found = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[run]), key=ArtifactFilterKey(any_=["deletion-concept"])
    )
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=found)
    text = artifact.data
    assert all(rule.id in text for rule in catalogue.RULES)
    assert "Löschkonzept" in text and "deletion concept" in text.lower()
    row = next(line for line in text.splitlines() if "R06" in line)
    assert "45" in row  # the period in force, from the setting, not the catalogue's default
