"""`erasure.request` intake lines open a request (the follow-up fans it out)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlmodel import select

from flows.intake import import_lines, intake_lines
from intake.lines import CHUNK
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


def test_an_unidentifiable_request_and_a_personal_reference_are_rejected_and_change_nothing(settings):
    run(
        settings,
        signup("erika@example.de"),
        {**signup("kai@example.de"), "list": "service_offers", "insurance_number": "A123456780"},
    )
    results = run(
        settings,
        erase(insurance_number="Z987654321"),  # nobody has it, and there is no address to keep
        erase(email="nobody@example.de", insurance_number="A123456780"),  # Kai's number
        erase(email="erika@example.de", reference="erika@example.de"),
        erase(),
        erase(email="nobody@example.de", reference="Tel. 030901820"),
    )
    assert [r.outcome for r in results] == ["rejected"] * 5
    assert "no data subject matches" in results[0].reason
    assert "registered with another e-mail address" in results[1].reason
    assert "nobody" not in " ".join(r.reason for r in results)
    assert "give email or insurance_number" in results[3].reason
    with transaction() as session:
        assert session.execute(text("SELECT count(*) FROM erasure_request")).scalar_one() == 0
        assert session.execute(text("SELECT count(*) FROM data_subject")).scalar_one() == 2


def test_a_request_for_an_address_nobody_has_opens_for_its_pseudonym_only(settings):
    line = erase(email="Nobody@Example.de", insurance_number="Z987654321")
    [result] = run(settings, line)
    assert (result.outcome, result.reason) == (
        "stored",
        "nobody is known by this address yet: the request is kept, and what arrives dated before it is erased with it",
    )
    assert [r.outcome for r in run(settings, line)] == ["duplicate"]
    # A second request for the address joins the open one, found by the pseudonym.
    [again] = run(settings, {**line, "channel": "email"})
    assert (again.outcome, again.reason) == ("stored", result.reason)
    with transaction() as session:
        from models.subjects import DataSubject

        [subject] = session.exec(select(DataSubject)).all()
        assert (subject.email, subject.insurance_number, subject.first_name) == (None, None, None)
        [request] = session.exec(select(ErasureRequest)).all()
        assert request.subject_id == subject.id and request.status == "open"
        assert session.execute(text("SELECT count(*) FROM erasure_task")).scalar_one() == 0
        details = session.execute(text("SELECT detail FROM audit_entry WHERE action = 'erasure.open'")).scalars().all()
        assert len(details) == 2 and all("known=no" in d for d in details)


@pytest.mark.parametrize("chunk_lines", [1, CHUNK], ids=["a chunk a line", "the default chunk"])
def test_a_request_above_the_signup_it_names_opens_after_the_file_and_a_reimport_changes_nothing(settings, chunk_lines):
    # The person asks for erasure (at NOW) above their sign-up (a day earlier) in the file:
    # by event time the request is the latest decision, so it must open, not be rejected
    # (a rejection here was opened by the file's re-import instead, which then changed things).
    lines = [json.dumps(erase(email="erika@example.de")), "", json.dumps(signup("erika@example.de"))]

    def imported() -> dict[int, str]:
        chunks = import_lines(settings.hmac_key(), lines, now=NOW, chunk_lines=chunk_lines)
        return {r.line: r.outcome for chunk in chunks for r in chunk}

    def state() -> tuple[int, int]:
        with transaction() as session:
            return (
                session.execute(text("SELECT count(*) FROM erasure_request WHERE status = 'open'")).scalar_one(),
                session.execute(text("SELECT count(*) FROM audit_entry")).scalar_one(),
            )

    assert imported() == {1: "stored", 3: "stored"}
    after_first = state()
    assert after_first[0] == 1
    assert imported() == {1: "duplicate", 3: "duplicate"}
    assert state() == after_first
