"""`rights.request` intake lines: a request per subject and right, idempotent; a rectification's
new values validated at the edge and stored only encrypted; bad lines rejected, nothing kept."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlmodel import select

from flows.intake import intake_lines
from models.db import transaction
from models.rights import RightsRequest, changes_of

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DOC_KEY = Fernet.generate_key()


def run(settings, *events, document_key: bytes | None = DOC_KEY) -> list:
    with transaction() as session:
        return intake_lines(
            session, settings.hmac_key(), [json.dumps(e) for e in events], now=NOW, document_key=document_key
        )


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


def ask(right: str, **kw) -> dict:
    return {"type": "rights.request", "right": right, "email": "erika@example.de", "at": NOW.isoformat(), **kw}


def requests() -> list[RightsRequest]:
    with transaction() as session:
        rows = list(session.exec(select(RightsRequest).order_by(RightsRequest.right)))
        for row in rows:
            session.expunge(row)
        return rows


def test_each_right_opens_one_request_with_its_deadline_and_a_repeat_is_a_duplicate(settings):
    run(settings, signup("erika@example.de"))
    lines = [ask(r) for r in ("access", "portability", "restriction", "objection")]
    lines.append(ask("rectification", changes={"last_name": "Neumann"}))
    assert [r.outcome for r in run(settings, *lines)] == ["stored"] * 5
    assert [r.outcome for r in run(settings, *lines)] == ["duplicate"] * 5
    found = requests()
    assert [r.right for r in found] == ["access", "objection", "portability", "rectification", "restriction"]
    assert {(r.status, r.due, r.channel) for r in found} == {("open", date(2026, 4, 2), "portal")}
    # The same right asked again in another line (another day) joins the open request.
    later = ask("access", at=(NOW - timedelta(hours=1)).isoformat(), reference="Portal 2")
    assert [r.outcome for r in run(settings, later)] == ["stored"]
    assert len(requests()) == 5


def test_a_rectification_is_validated_at_the_edge_and_its_values_stored_encrypted(settings):
    run(settings, signup("erika@example.de"))
    changes = {
        "email": " Erika.Neu@Example.DE ",
        "first_name": "Erika",
        "last_name": "Neumann",
        "phone": "030 901820",
        "birth_date": "1980-05-17",
    }
    assert [r.outcome for r in run(settings, ask("rectification", changes=changes))] == ["stored"]
    [request] = requests()
    assert b"Neumann" not in request.changes and b"901820" not in request.changes
    assert changes_of(request, DOC_KEY) == {
        "email": "erika.neu@example.de",
        "first_name": "Erika",
        "last_name": "Neumann",
        "phone": "+4930901820",
        "birth_date": date(1980, 5, 17),
    }


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (ask("teleport"), "right"),
        (ask("access", changes={"last_name": "X"}), "only for it"),
        (ask("rectification"), "needed for a rectification"),
        (ask("rectification", changes={}), "at least one new value"),
        (ask("rectification", changes={"email": "not-an-address"}), "changes.email"),
        (ask("rectification", changes={"phone": "12"}), "changes.phone"),
        (ask("rectification", changes={"birth_date": "2099-01-01"}), "plausible birth date"),
        (ask("rectification", changes={"iban": "DE02120300000000202051"}), "Extra inputs"),
        (ask("rectification", changes={"last_name": "Neu\u202emann"}), "control characters"),
        (ask("restriction", email="nobody@example.de"), "no data subject"),
        (ask("access", reference="Anruf 030901820"), "personal data"),
        (ask("access", email=None), "give email or insurance_number"),
    ],
)
def test_bad_lines_are_rejected_with_a_reason_that_repeats_nothing_and_change_nothing(settings, line, why):
    run(settings, signup("erika@example.de"))
    [result] = run(settings, line)
    assert result.outcome == "rejected" and why in result.reason, result.reason
    for value in ("nobody", "901820", "Neumann", "DE02120300000000202051", "not-an-address"):
        assert value not in result.reason
    with transaction() as session:
        assert session.execute(text("SELECT count(*) FROM rights_request")).scalar_one() == 0


def test_a_rectification_without_a_document_key_is_rejected(settings):
    run(settings, signup("erika@example.de"))
    [result] = run(settings, ask("rectification", changes={"last_name": "Neumann"}), document_key=None)
    assert result.outcome == "rejected" and "document key" in result.reason


def test_a_request_above_the_signup_it_names_is_opened_after_the_file_and_once(settings):
    # A portal export in arrival order: the access request (at NOW) above the sign-up it
    # names (a day earlier). Tried again after the file's other lines, it opens.
    assert [r.outcome for r in run(settings, ask("access"), signup("erika@example.de"))] == ["stored", "stored"]
    assert [r.outcome for r in run(settings, ask("access"), signup("erika@example.de"))] == ["duplicate"] * 2
    assert [r.right for r in requests()] == ["access"]


def test_rectifications_joined_keep_per_field_the_value_asked_for_last_by_time_not_arrival(settings):
    run(settings, signup("erika@example.de"))
    hours = lambda n: (NOW - timedelta(hours=n)).isoformat()  # noqa: E731
    newer = ask("rectification", at=hours(1), changes={"last_name": "Neumann", "phone": "030 901820"})
    older = ask("rectification", at=hours(2), changes={"last_name": "Altmann", "first_name": "Erica"})
    same_instant = ask("rectification", at=hours(1), changes={"phone": "030 901821"})
    assert [r.outcome for r in run(settings, newer, older, same_instant)] == ["stored"] * 3
    [request] = requests()
    # The older request adds the field only it names; at the same instant the later arrival wins.
    assert changes_of(request, DOC_KEY) == {"last_name": "Neumann", "first_name": "Erica", "phone": "+4930901821"}


def test_a_rectification_older_than_a_completed_one_keeps_only_what_that_did_not_correct(settings):
    from models.rights import complete

    run(settings, signup("erika@example.de"))
    hours = lambda n: (NOW - timedelta(hours=n)).isoformat()  # noqa: E731
    assert [r.outcome for r in run(settings, ask("rectification", at=hours(1), changes={"last_name": "Neumann"}))] == [
        "stored"
    ]
    with transaction() as session:  # answered: our copy and the processors corrected
        request = session.exec(select(RightsRequest)).one()
        complete(request, "corrected", NOW)
        request.corrected = "last_name"
    # Dated before it, arriving after: its last name is the older decision.
    older = ask("rectification", at=hours(2), changes={"last_name": "Altmann"})
    [result] = run(settings, older)
    assert (result.outcome, result.reason) == ("unchanged", "every value it asks for was corrected by a later request")
    assert [r.outcome for r in run(settings, older)] == ["duplicate"]
    mixed = ask("rectification", at=hours(3), changes={"last_name": "Altmann", "first_name": "Erica"})
    assert [r.outcome for r in run(settings, mixed)] == ["stored"]
    [still_open] = [r for r in requests() if r.status == "open"]
    assert changes_of(still_open, DOC_KEY) == {"first_name": "Erica"}


@pytest.mark.parametrize(
    ("first", "joined", "mid_outcome", "last_name"),
    [
        # opened at -1h (first name), an older -5h last name joined, completed: -3h is newer
        ({"first_name": "Erica"}, ("Old", 5), "stored", "Mid"),
        # opened at -5h (first name), a newer -1h last name joined, completed: -3h is older
        ({"first_name": "Erica"}, ("New", 1), "unchanged", None),
    ],
    ids=["older field joined", "newer field joined"],
)
def test_a_completed_rectification_is_compared_field_by_field_by_when_each_was_asked(
    settings, first, joined, mid_outcome, last_name
):
    from models.rights import complete

    run(settings, signup("erika@example.de"))
    hours = lambda n: (NOW - timedelta(hours=n)).isoformat()  # noqa: E731
    opened_at = 1 if joined[1] == 5 else 5
    lines = [
        ask("rectification", at=hours(opened_at), changes=first),
        ask("rectification", at=hours(joined[1]), changes={"last_name": joined[0]}),
    ]
    assert [r.outcome for r in run(settings, *lines)] == ["stored", "stored"]
    with transaction() as session:
        request = session.exec(select(RightsRequest)).one()
        complete(request, "corrected", NOW)
        request.corrected = "first_name,last_name"
    [result] = run(settings, ask("rectification", at=hours(3), changes={"last_name": "Mid"}))
    assert result.outcome == mid_outcome
    opened = [r for r in requests() if r.status == "open"]
    assert [changes_of(r, DOC_KEY) for r in opened] == ([{"last_name": last_name}] if last_name else [])


@pytest.mark.database
def test_a_rectification_waiting_for_a_completion_in_flight_is_judged_against_it(pg):
    # PostgreSQL: the joining line waits for the completing transaction's lock on the open
    # request; what that completion corrected must count once the line goes on.
    import threading
    import time

    from core.settings import get_settings
    from models.rights import complete

    from pg import waiting_on_locks

    settings = get_settings()
    run(settings, signup("erika@example.de"))
    hours = lambda n: (NOW - timedelta(hours=n)).isoformat()  # noqa: E731
    run(settings, ask("rectification", at=hours(1), changes={"last_name": "Neumann"}))
    results: list = []
    joining = threading.Thread(
        target=lambda: results.extend(
            run(settings, ask("rectification", at=hours(2), changes={"last_name": "Altmann"}))
        )
    )
    with transaction() as session:  # answered: our copy and the processors corrected
        request = session.exec(select(RightsRequest).with_for_update()).one()
        complete(request, "corrected", NOW)
        request.corrected = "last_name"
        session.flush()
        joining.start()
        deadline = time.monotonic() + 10
        while not waiting_on_locks(pg):
            assert joining.is_alive() and time.monotonic() < deadline, "the joining line did not wait"
            time.sleep(0.01)
    joining.join(10)
    [result] = results
    assert (result.outcome, result.reason) == ("unchanged", "every value it asks for was corrected by a later request")
    assert [r.status for r in requests()] == ["completed"]
