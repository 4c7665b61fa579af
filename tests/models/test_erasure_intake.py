"""`erasure.request` intake lines open a request (the follow-up fans it out)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlmodel import select

from flows.intake import intake_lines
from models.db import transaction
from models.erasure import ErasureRequest
from models.recipients import record_sent_many

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def run(settings, *events) -> list:
    with transaction() as session:
        return intake_lines(session, settings.hmac_key(), [json.dumps(e) for e in events], now=NOW)


def signup(email: str) -> dict:
    return {
        "type": "consent.signup",
        "list": "newsletter",
        "email": email,
        "first_name": "Erika",
        "last_name": "Muster",
        "ip": "192.0.2.1",
        "at": (NOW - timedelta(days=1)).isoformat(),
        "source": "https://example.de/nl",
        "policy_version": "2026-01",
    }


def erase(**kw) -> dict:
    return {"type": "erasure.request", "channel": "portal", "at": NOW.isoformat(), **kw}


def test_a_request_line_opens_one_request_with_a_task_per_recipient_and_is_idempotent(settings):
    run(settings, signup("erika@example.de"))
    with transaction() as session:
        from models.subjects import DataSubject

        subject = session.exec(select(DataSubject)).one()
        record_sent_many(session, "cleverreach", "consent:newsletter", {subject.id: "77"}, NOW)
    line = erase(email="Erika@Example.de", reference="Portal 2026-03")
    assert [r.outcome for r in run(settings, line)] == ["stored"]
    assert [r.outcome for r in run(settings, line)] == ["duplicate"]
    with transaction() as session:
        [request] = session.exec(select(ErasureRequest)).all()
        assert request.due.isoformat() == "2026-04-02" and request.status == "open"
        # CleverReach, and USU, who builds the newsletter on it (core.catalogue)
        assert session.execute(text("SELECT count(*) FROM erasure_task")).scalar_one() == 2


def test_unknown_subject_and_personal_reference_are_rejected_and_change_nothing(settings):
    run(settings, signup("erika@example.de"))
    results = run(
        settings,
        erase(email="nobody@example.de"),
        erase(email="erika@example.de", reference="erika@example.de"),
        erase(),
    )
    assert [r.outcome for r in results] == ["rejected"] * 3
    assert "nobody" not in " ".join(r.reason for r in results)
    assert "give email or insurance_number" in results[2].reason
    with transaction() as session:
        assert session.execute(text("SELECT count(*) FROM erasure_request")).scalar_one() == 0
