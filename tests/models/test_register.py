"""The recipient register's set-based writes: several purposes in one statement."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import select

from models.db import transaction
from models.identity import pseudonym
from models.recipients import Recipient, record_may_hold_by_purpose, record_sent_by_purpose
from models.subjects import DataSubject

from support import TEST_KEY

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LATER = datetime(2026, 3, 2, 9, 5, tzinfo=UTC)


def _subjects(session, n: int) -> list[DataSubject]:
    people = [DataSubject(pseudonym=pseudonym(TEST_KEY.encode(), "email", f"p{i}@example.org")) for i in range(n)]
    session.add_all(people)
    session.flush()
    return people


def _rows(session) -> dict[tuple, tuple]:
    return {
        (r.subject_id, r.processor, r.purpose): (r.external_id, r.confirmed_at, r.removed_at)
        for r in session.exec(select(Recipient))
    }


def test_several_purposes_go_in_one_write_with_each_rows_purpose(settings):
    """A person with two orders in one batch gets a row per order; may hold, then holds."""
    with transaction() as session:
        a, b = _subjects(session, 2)
        ahead = {"student-id:O-1": {a.id: "O-1"}, "student-id:O-2": {a.id: "O-2", b.id: "O-2b"}}
        record_may_hold_by_purpose(session, "isic", ahead, NOW)
        assert _rows(session) == {
            (a.id, "isic", "student-id:O-1"): ("O-1", None, None),
            (a.id, "isic", "student-id:O-2"): ("O-2", None, None),
            (b.id, "isic", "student-id:O-2"): ("O-2b", None, None),
        }
        record_sent_by_purpose(session, "isic", {"student-id:O-2": {a.id: "O-2"}}, LATER)
        record_sent_by_purpose(session, "isic", {"student-id:O-1": {a.id: None}, "x:1": {}}, LATER)
        rows = _rows(session)
    assert rows[a.id, "isic", "student-id:O-1"][1:] == (LATER, None)  # holds now, its id kept
    assert rows[a.id, "isic", "student-id:O-1"][0] == "O-1"
    assert rows[a.id, "isic", "student-id:O-2"][1:] == (LATER, None)
    assert rows[b.id, "isic", "student-id:O-2"][1] is None  # still "may hold"
    assert len(rows) == 3  # an empty purpose writes nothing


def test_a_co_recipient_is_written_ahead_for_its_purpose_only(settings):
    """USU works on CleverReach's newsletter data (``core.catalogue``): written ahead with it
    for the newsletter, not for the service offers, in the same write."""
    with transaction() as session:
        [a] = _subjects(session, 1)
        record_may_hold_by_purpose(
            session, "cleverreach", {"consent:newsletter": {a.id: None}, "consent:offers": {a.id: None}}, NOW
        )
        rows = _rows(session)
    assert set(rows) == {
        (a.id, "cleverreach", "consent:newsletter"),
        (a.id, "cleverreach", "consent:offers"),
        (a.id, "usu", "consent:newsletter"),
    }
