"""Scale-out on PostgreSQL: two worker processes run the same flow at once, through the
project's command line, against one database and the sandbox; every item is processed once.

Two kinds of queue, each with a gate this test holds while the workers start, so that both
are in the middle of the work when it opens (the race a scheduler starting the same
deployment twice creates), without sleeping for it:

- an ordered stream (newsletter consents after a cursor): the gate is the cursor's row
  lock, which both workers wait for (``models.cursors.get_cursor``); then they take
  batches in turn, each after the other's commit;
- a set of independent items (video chats due for deletion): the gate is the audit head,
  which a worker locks at the end of a batch; both have claimed a batch of their own
  (``models.db.skip_locked``) and deleted it at Flexperto when they wait there.

Runs only in the PostgreSQL pass (PSYNC_TEST_DATABASE=postgres).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import func, select

from flows import bookings
from flows.intake import intake_lines
from models.audit import AuditEntry, AuditHead, verify
from models.consent import ConsentRecord
from models.cursors import get_cursor
from models.db import transaction
from models.recipients import Recipient
from models.types import utcnow
from psync.sandbox_env import SERVICE_POINTS

from pg import waiting_on_locks
from support import TEST_KEY, receivers_sent, sandbox_state

pytestmark = [pytest.mark.postgres_only, pytest.mark.usefixtures("prefect_harness")]

PSYNC = Path(sys.executable).with_name("psync")
SUBSCRIBERS = 5000
PER_TASK = 250  # records per task and per upsert call: 20 batches
UPSERT = "POST /v3/groups/{gid}/receivers/upsertplus"
DEADLINE_S = 240


def _consents(count: int):
    now = utcnow()
    for i in range(count):
        email = f"scale.{i:05d}@example.de"
        yield json.dumps(
            {
                "type": "consent.signup",
                "list": "newsletter",
                "email": email,
                "salutation": "Frau",
                "first_name": "Erika",
                "last_name": "Muster",
                "ip": "192.0.2.10",
                "at": (now - timedelta(hours=2)).isoformat(),
                "source": "https://example.de/nl",
                "policy_version": "2026-01",
            }
        )
        yield json.dumps(
            {
                "type": "consent.confirm",
                "list": "newsletter",
                "email": email,
                "ip": "198.51.100.7",
                "at": (now - timedelta(hours=1)).isoformat(),
            }
        )


def _worker_environment() -> dict[str, str]:
    """This test's PSYNC_* settings and the session's Prefect API (prefect_test_harness)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}


def _start(args: list[str], folder: Path, name: str) -> subprocess.Popen:
    # Output to files: a full pipe would block a worker nobody reads from yet.
    with (folder / f"{name}.out").open("w") as out, (folder / f"{name}.err").open("w") as err:
        return subprocess.Popen([str(PSYNC), *args], env=_worker_environment(), cwd=folder, stdout=out, stderr=err)


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.kill()
        worker.wait()


def _report(folder: Path, name: str) -> str:
    return (folder / f"{name}.err").read_text()[-3000:]


def run_two_at_once(url: str, gate, args: list[str], folder: Path) -> list[dict]:
    """Run `psync ARGS` twice at once while `gate(session)` holds a row lock; open the gate
    once both workers wait for it. Returns what each printed (the flow's counts).
    """
    names = ("worker-a", "worker-b")
    deadline = time.monotonic() + DEADLINE_S
    with transaction(url) as session:
        gate(session)  # locked until this block commits
        workers = [_start(args, folder, name) for name in names]
        try:
            while waiting_on_locks(url) < len(workers):
                for name, worker in zip(names, workers, strict=True):
                    assert worker.poll() is None, f"{name} ended early:\n{_report(folder, name)}"
                assert time.monotonic() < deadline, "the workers never reached the gate"
                time.sleep(0.05)
        except BaseException:
            _stop(workers)
            raise
    counts = []
    for name, worker in zip(names, workers, strict=True):
        try:
            code = worker.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _stop(workers)
            raise
        assert code == 0, f"{name} failed:\n{_report(folder, name)}"
        counts.append(json.loads((folder / f"{name}.out").read_text().strip().splitlines()[-1]))
    return counts


def test_two_workers_push_5000_newsletter_consents_exactly_once(settings, against_sandbox, tmp_path):
    url = settings.database_url
    with transaction() as session:
        results = intake_lines(session, TEST_KEY.encode(), _consents(SUBSCRIBERS), now=utcnow())
    assert Counter(r.outcome for r in results) == {"stored": 2 * SUBSCRIBERS}

    counts = run_two_at_once(
        url,
        lambda session: get_cursor(session, "cleverreach:newsletter"),
        [
            "run",
            "sync-newsletter-consents",
            "--param",
            'lists=["newsletter"]',
            "--param",
            f"records_per_task={PER_TASK}",
            "--param",
            f"batch_size={PER_TASK}",
        ],
        tmp_path,
    )

    batches = SUBSCRIBERS // PER_TASK
    assert sum(c.get("pushed", 0) for c in counts) == SUBSCRIBERS
    # At the processor: every receiver once, none written twice, one call per batch.
    cleverreach = sandbox_state(against_sandbox)["cleverreach"]
    receivers = cleverreach["groups"]["1001"]["receivers"]
    assert len(receivers) == SUBSCRIBERS
    assert {len(r["events"]) for r in receivers.values()} == {1}
    assert cleverreach["calls"][UPSERT] == batches
    with transaction() as session:
        sent = session.exec(
            select(AuditEntry.detail, AuditEntry.flow_run_id).where(
                AuditEntry.action == "newsletter.push", AuditEntry.outcome == "sent"
            )
        ).all()
        upserts = session.exec(
            select(AuditEntry.flow_run_id, func.count())
            .where(AuditEntry.action == "call.receivers.upsert")
            .group_by(AuditEntry.flow_run_id)
        ).all()
        # Every subscriber sent once (a "sent" row per upsert call), and the register agrees.
        assert receivers_sent(detail for detail, _ in sent) == SUBSCRIBERS
        at_cleverreach = select(func.count()).select_from(Recipient).where(Recipient.processor == "cleverreach")
        assert session.exec(at_cleverreach).one() == SUBSCRIBERS
        # Both workers did part of the work, and the calls add up to the batches.
        per_run: Counter[str | None] = Counter()
        for detail, run in sent:
            per_run[run] += receivers_sent([detail])
        assert len(per_run) == 2 and min(per_run.values()) >= PER_TASK, per_run
        assert sorted(dict(upserts).values()) == sorted(v // PER_TASK for v in per_run.values())
        # The cursor stands at the last change; the audit chain did not fork.
        last = session.exec(select(func.max(ConsentRecord.change_seq))).one()
        assert get_cursor(session, "cleverreach:newsletter").position == last
        assert verify(session, TEST_KEY.encode()).ok


VIDEO_BOOKINGS = 200
PER_PURGE_TASK = 20  # 10 batches


# The website's clock at intake; the consultations lie after it, their chats are due in May.
BOOKED_AT = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


def _video_bookings(count: int):
    at = BOOKED_AT
    for i in range(count):
        yield json.dumps(
            {
                "type": "booking.request",
                "booking_id": f"V-{i:04d}",
                "channel": "video",
                "start": "2026-02-02T10:00:00+01:00",
                "duration_minutes": 30,
                "salutation": "Frau",
                "first_name": "Erika",
                "last_name": "Bucher",
                "phone": "+49 170 1234567",
                "email": f"video.{i:04d}@example.de",
                "birth_date": "1980-05-17",
                "at": at.isoformat(),
            }
        )


def test_two_workers_purge_200_video_chats_exactly_once(settings, against_sandbox, tmp_path):
    url = settings.database_url
    with transaction() as session:
        results = intake_lines(
            session,
            TEST_KEY.encode(),
            _video_bookings(VIDEO_BOOKINGS),
            now=BOOKED_AT,
            service_points=SERVICE_POINTS,
        )
    assert Counter(r.outcome for r in results) == {"stored": VIDEO_BOOKINGS}
    assert bookings.push_bookings(records_per_task=VIDEO_BOOKINGS)["video_registered"] == VIDEO_BOOKINGS

    counts = run_two_at_once(
        url,
        lambda session: session.get(AuditHead, 1, with_for_update=True),
        ["run", "purge-video-chat-data", "--param", "as_of=2026-12-31", "--param", f"batch_size={PER_PURGE_TASK}"],
        tmp_path,
    )

    assert sum(c.get("chat_purged", 0) for c in counts) == VIDEO_BOOKINGS
    # At Flexperto: everything gone, and every customer deleted by one worker only.
    flexperto = sandbox_state(against_sandbox)["flexperto"]
    assert flexperto["customers"] == {}
    assert flexperto["calls"]["DELETE /api/v2/customers/{id}"] == VIDEO_BOOKINGS
    with transaction() as session:
        purged = session.exec(
            select(AuditEntry.detail, AuditEntry.flow_run_id).where(
                AuditEntry.action == "video.purge", AuditEntry.outcome == "verified"
            )
        ).all()
        assert len(purged) == len({detail for detail, _ in purged}) == VIDEO_BOOKINGS
        per_run = Counter(run for _, run in purged)
        assert len(per_run) == 2 and min(per_run.values()) >= PER_PURGE_TASK, per_run
        assert (
            session.exec(select(func.count()).select_from(Recipient).where(Recipient.removed_at.is_not(None))).one()
            == VIDEO_BOOKINGS
        )
        assert verify(session, TEST_KEY.encode()).ok
