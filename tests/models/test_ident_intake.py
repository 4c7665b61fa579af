"""`ident.case` intake lines register a Nect identification case for the erasure fan-out."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlmodel import select

from flows.intake import intake_lines
from models.db import transaction
from models.recipients import Recipient
from models.subjects import DataSubject

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CASE, OTHER = uuid.UUID(int=7), uuid.UUID(int=8)


def case(case_id: uuid.UUID = CASE, **kw) -> str:
    return json.dumps(
        {"type": "ident.case", "email": "Ida.Ident@Example.de", "case_id": str(case_id), "at": NOW.isoformat(), **kw}
    )


def run(settings, *lines: str) -> list:
    with transaction() as session:
        return intake_lines(session, settings.hmac_key(), lines, now=NOW)


def test_a_case_is_registered_at_nect_once_per_case_and_a_repeat_is_a_duplicate(settings):
    assert [r.outcome for r in run(settings, case(), case(OTHER))] == ["stored", "stored"]
    assert [r.outcome for r in run(settings, case())] == ["duplicate"]
    with transaction() as session:
        subject = session.exec(select(DataSubject)).one()
        rows = session.exec(select(Recipient).order_by(Recipient.purpose)).all()
    assert subject.email == "ida.ident@example.de"
    assert [(r.processor, r.purpose, r.external_id, r.subject_id) for r in rows] == [
        ("nect", f"ident:{CASE}", str(CASE), subject.id),
        ("nect", f"ident:{OTHER}", str(OTHER), subject.id),
    ]


def test_a_case_id_that_is_not_nects_uuid_is_rejected_and_nothing_is_stored(settings):
    [result] = run(settings, case(case_id="x"))  # type: ignore[arg-type]  # the wrong input on purpose
    assert result.outcome == "rejected" and "case_id" in result.reason
    with transaction() as session:
        assert session.exec(select(Recipient)).all() == [] and session.exec(select(DataSubject)).all() == []
