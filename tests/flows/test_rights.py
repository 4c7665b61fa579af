"""Rights requests end to end: access and portability against the sandbox, the shared
plumbing (opening, joining, claiming, deadlines and extensions, the outbox, the form flow)."""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

import pytest
from scene import ANNA, BERT, DOC_KEY, everywhere, lines_of, subject_of, take_in
from sqlmodel import select

from connectors import cleverreach
from core.clock import berlin_today
from core.settings import get_settings
from flows import rights
from flows.common import JobFailed
from flows.intake import intake_lines
from flows.rights import (
    Ask,
    Outcome,
    handle,
    handle_rights_request,
    outbox_files,
    purge_outbox,
    read_outbox,
    write_outbox,
)
from models.audit import AuditEntry, verify
from models.db import transaction
from models.deadlines import due_date
from models.erasure import UnknownSubject
from models.rights import Right, RightsRequest, claim
from models.types import utcnow

from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES, sandbox_state

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def env(against_sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", DOC_KEY)
    monkeypatch.setenv("PSYNC_RIGHTS_OUTBOX", str(tmp_path / "outbox"))
    get_settings.cache_clear()
    (tmp_path / "nachweis.pdf").write_bytes(PDF_BYTES)
    (tmp_path / "ausweis.png").write_bytes(PNG_BYTES)
    (tmp_path / "foto.jpg").write_bytes(JPEG_BYTES)
    return against_sandbox, tmp_path


def the_request(right: str = "access") -> RightsRequest:
    with transaction() as session:
        request = session.exec(select(RightsRequest).where(RightsRequest.right == right)).one()
        session.expunge(request)
        return request


def package_of(request_id) -> tuple[dict, str]:
    files = {p.name: p for p in outbox_files(str(request_id))}
    assert {"access.json.enc", "access.html.enc"} <= set(files)
    assert {n for n in files if not n.startswith("access.")} <= {n for n in files if n.startswith("document-")}
    for path in files.values():  # encrypted at rest: no address in the file itself
        assert ANNA.email.encode() not in path.read_bytes()
        assert (os.stat(path).st_mode & 0o077) == 0
    return json.loads(read_outbox(files["access.json.enc"])), read_outbox(files["access.html.enc"]).decode()


# access ------------------------------------------------------------------------------------------
def test_access_for_a_person_known_everywhere_reads_every_processor_back_and_holds_nobody_else(env):
    url, base = env
    everywhere(url, base, ANNA, BERT)
    counts = handle_rights_request(right="access", email=ANNA.email.upper(), channel="letter", reference="AZ 7/26")
    assert counts == {"completed": 1, "access_packages": 1}
    request = the_request()
    assert request.status == "completed" and request.outcome.startswith("tables=")
    package, page = package_of(request.id)

    # Everything we hold, table by table, driven by the classification.
    held = package["controller_data"]
    assert {"data_subject", "consent", "consent_event", "booking", "isic_order", "isic_document", "recipient"} <= set(
        held
    )
    assert held["data_subject"][0]["email"] == ANNA.email
    assert {b["booking_ref"] for b in held["booking"]} == {"B-anna-branch", "B-anna-video"}
    assert "verschlüsselt" in held["isic_document"][0]["ciphertext"]  # described here, copied beside
    assert package["document_copies"] == [
        "document-ISIC-anna-id_copy.png",
        "document-ISIC-anna-photo.jpg",
        "document-ISIC-anna-student_proof.pdf",
    ]
    # What each processor holds now, read back through its API.
    now = {(e["processor"], e["read"]) for e in package["processors_now"]}
    assert now == {
        ("cleverreach", "api"),
        ("usu", "manual"),
        ("timify", "api"),
        ("flexperto", "api"),
        ("isic", "api"),
        ("nect", "api"),
    }
    by_processor = {e["processor"]: e["holds_now"] for e in package["processors_now"]}
    assert by_processor["cleverreach"]["receiver"]["email"] == ANNA.email
    assert len(by_processor["timify"]["appointments"]) == 2
    assert by_processor["flexperto"]["archives"]
    assert by_processor["isic"]["cards"] and by_processor["isic"]["cardholder"]
    assert by_processor["nect"]["case"]
    # Recipients with purpose, legal basis, storage and dates; manual processors with how to ask.
    recipients = {r["processor"]: r for r in package["recipients"]}
    assert set(recipients) == {"cleverreach", "usu", "timify", "flexperto", "isic", "nect"}
    assert recipients["timify"]["legal_basis"].startswith("Art. 6") and recipients["timify"]["first_sent_at"]
    assert "30 Tage" in recipients["timify"]["storage_period"]
    manual = {m["processor"]: m for m in package["manual_processors"]}
    assert manual["usu"]["received_your_data"] and not manual["emilie"]["received_your_data"]
    assert manual["emilie"]["contact"]
    # Nothing of the other person, anywhere in the package.
    text = json.dumps(package, ensure_ascii=False) + page
    for marker in BERT.markers() + [BERT.order, BERT.video, str(subject_of(BERT).id)]:
        assert marker not in text, marker
    assert ANNA.iban in text and "Auskunft über Ihre personenbezogenen Daten" in page
    assert "<script" not in page
    # Audited per processor read, under the pseudonym; the chain holds.
    with transaction() as session:
        entries = list(session.exec(select(AuditEntry).where(AuditEntry.action.startswith("rights."))))
        assert verify(session, get_settings().hmac_key()).ok
    reads = {(e.processor, e.outcome) for e in entries if e.action == "rights.access.read"}
    assert {p for p, _ in reads} == {"cleverreach", "timify", "flexperto", "isic", "nect"}
    assert {(e.action, e.outcome) for e in entries} >= {("rights.open", "opened"), ("rights.access", "completed")}
    # (The call journal's "rights.access.batch committed" row names the batch, nobody.)
    assert all(e.subject_pseudonym == subject_of(ANNA).pseudonym for e in entries if not e.action.endswith(".batch"))


def test_access_shows_what_the_processor_holds_now_not_what_we_sent(env):
    url, base = env
    everywhere(url, base, ANNA)
    # Someone changed the receiver at CleverReach (the newsletter's editor, say).
    settings = get_settings()
    client = cleverreach.from_settings(settings)
    client.upsert(
        settings.cleverreach.group_newsletter,
        "newsletter",
        [{"email": ANNA.email, "global_attributes": {"firstname": "Annemarie"}}],
    )
    handle_rights_request(right="access", email=ANNA.email)
    package, page = package_of(the_request().id)
    receiver = next(e for e in package["processors_now"] if e["processor"] == "cleverreach")["holds_now"]["receiver"]
    assert receiver["global_attributes"]["firstname"] == "Annemarie"
    assert "Annemarie" in page
    assert package["controller_data"]["data_subject"][0]["first_name"] == ANNA.first


def test_access_for_a_newsletter_subscriber_only(env):
    url, base = env
    take_in(base, *lines_of(BERT)[:2])
    from scene import push_newsletter

    push_newsletter(BERT)
    handle_rights_request(right="access", email=BERT.email)
    package, _ = package_of(the_request().id)
    assert {e["processor"] for e in package["processors_now"]} == {"cleverreach", "usu"}
    assert set(package["controller_data"]) >= {"data_subject", "consent", "consent_event", "recipient"}
    assert "booking" not in package["controller_data"]
    calls = sandbox_state(url)
    assert not calls["timify"]["customers"] and not calls["nect"]["cases"]


def test_a_processor_down_leaves_the_access_request_open_and_writes_nothing(env, monkeypatch):
    url, base = env
    everywhere(url, base, ANNA)
    from connectors.isic import IsicReader
    from connectors.transport import RetriableError

    def down(self, client, target):
        raise RetriableError("isic", "cardholders.get", 503, 5)

    up = IsicReader.read
    monkeypatch.setattr(IsicReader, "read", down)
    with pytest.raises(JobFailed, match=r"not answered yet: not written: could not read isic"):
        handle_rights_request(right="access", email=ANNA.email)
    request = the_request()
    assert request.status == "open" and request.attempts == 1 and outbox_files(str(request.id)) == []
    monkeypatch.setattr(IsicReader, "read", up)
    counts = rights.follow_up_rights_requests()
    assert counts["completed"] == 1 and counts["access_packages"] == 1
    assert the_request().status == "completed"


# portability -------------------------------------------------------------------------------------
def test_portability_exports_what_the_person_provided_as_json_and_csv(env):
    url, base = env
    everywhere(url, base, ANNA, BERT)
    counts = handle_rights_request(right="portability", email=ANNA.email)
    assert counts == {"completed": 1, "portability_exports": 1}
    request = the_request("portability")
    files = {p.name.removesuffix(".enc"): read_outbox(p) for p in outbox_files(str(request.id))}
    assert set(files) == {
        "portability.json",
        "profile.csv",
        "signups.csv",
        "bookings.csv",
        "student_id_orders.csv",
        "document-ISIC-anna-id_copy.png",
        "document-ISIC-anna-photo.jpg",
        "document-ISIC-anna-student_proof.pdf",
    }
    assert files["document-ISIC-anna-student_proof.pdf"] == PDF_BYTES
    data = json.loads(files["portability.json"])
    assert data["schema"] == "psync.portability/1"
    assert data["profile"] == [
        {
            "email": ANNA.email,
            "salutation": "Frau",
            "first_name": ANNA.first,
            "last_name": ANNA.last,
            "insurance_number": None,
        }
    ]
    assert [s["list_name"] for s in data["signups"]] == ["newsletter"]
    assert {b["booking_ref"] for b in data["bookings"]} == {"B-anna-branch", "B-anna-video"}
    assert data["student_id_orders"][0]["iban"] == ANNA.iban
    # Provided data only: no states, processors' ids or audit.
    assert "state" not in data["signups"][0] and "timify_appointment_id" not in data["bookings"][0]
    rows = list(csv.DictReader(io.StringIO(files["bookings.csv"].decode())))
    assert {r["booking_ref"] for r in rows} == {"B-anna-branch", "B-anna-video"} and rows[0]["phone"]
    text = b"".join(v for k, v in files.items() if not k.startswith("document-")).decode()
    assert BERT.email not in text and BERT.iban not in text and BERT.last not in text


# the shared plumbing -----------------------------------------------------------------------------
def test_intake_line_opens_a_request_and_the_follow_up_answers_it(env):
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    at = utcnow().isoformat()
    line = json.dumps({"type": "rights.request", "right": "portability", "email": ANNA.email, "at": at})
    take_in(base, line)
    with transaction() as session:  # a repeat is a duplicate
        [again] = intake_lines(session, get_settings().hmac_key(), [line], now=utcnow())
    assert again.outcome == "duplicate"
    with transaction() as session:
        assert len(list(session.exec(select(RightsRequest)))) == 1
    counts = rights.follow_up_rights_requests()
    assert counts["completed"] == 1 and counts["portability_exports"] == 1
    # Known to the newsletter only: the sign-up and the profile it gave, nothing invented.
    request = the_request("portability")
    files = {p.name.removesuffix(".enc"): read_outbox(p) for p in outbox_files(str(request.id))}
    data = json.loads(files["portability.json"])
    assert [s["list_name"] for s in data["signups"]] == ["newsletter"] and data["signups"][0]["signup_at"]
    assert data["profile"][0]["email"] == ANNA.email
    assert data["bookings"] == [] and data["student_id_orders"] == []


def test_a_second_request_for_the_same_right_joins_the_open_one(env):
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    with transaction() as session:
        first = rights.open_request(session, right="access", email=ANNA.email)
        second = rights.open_request(session, right="access", email=ANNA.email)
        other = rights.open_request(session, right="portability", email=ANNA.email)
    assert first.id == second.id != other.id


def test_an_unknown_subject_is_refused_and_nothing_is_stored(env):
    with pytest.raises(UnknownSubject), transaction() as session:
        rights.open_request(session, right="access", email="nobody@example.de")
    with transaction() as session:
        assert not list(session.exec(select(RightsRequest)))


def test_an_objection_from_an_address_nobody_has_is_kept_and_a_signup_arriving_later_stays_withdrawn(env):
    # The portal's "I object" overtook the person's sign-up (another file or request): by
    # event time the objection is the later decision. A restriction of nobody's data is refused.
    from flows import newsletter
    from models.consent import ConsentRecord

    url, base = env
    at = utcnow().isoformat()

    def ask(right: str) -> str:
        return json.dumps({"type": "rights.request", "right": right, "email": ANNA.email, "at": at})

    def take(line: str) -> tuple[str, str]:
        with transaction() as session:
            [result] = intake_lines(session, get_settings().hmac_key(), [line], now=utcnow())
        return result.outcome, result.reason

    assert take(ask("restriction")) == ("rejected", "no data subject matches the identifiers given")
    outcome, reason = take(ask("objection"))
    assert outcome == "stored" and reason.startswith("nobody is known by this address yet: the objection is kept")
    assert rights.follow_up_rights_requests()["completed"] == 1
    take_in(base, *lines_of(ANNA)[:2])  # the sign-up and its confirmation, dated hours before
    with transaction() as session:
        records = session.exec(select(ConsentRecord)).all()
        assert {(r.list_name, r.state) for r in records} == {
            ("newsletter", "withdrawn"),
            ("service_offers", "withdrawn"),
        }
    newsletter.sync_newsletter_consents()
    assert sandbox_state(url)["cleverreach"]["groups"]["1001"]["receivers"] == {}


def test_access_and_portability_for_an_address_nobody_has_are_kept_and_answered_with_nothing_held(env):
    # Art. 15 owes the person the answer "nothing" too, in time: the request is kept for the
    # address's pseudonym, with its deadline, and the follow-up answers it. The address
    # itself is kept nowhere, and an insurance number nobody has is still refused.
    url, base = env
    at = utcnow().isoformat()

    def take(line: dict) -> tuple[str, str]:
        with transaction() as session:
            [result] = intake_lines(session, get_settings().hmac_key(), [json.dumps(line)], now=utcnow())
        return result.outcome, result.reason

    asked = "nobody is known by this address yet: the request is kept and answered with what is held"
    assert take({"type": "rights.request", "right": "portability", "email": ANNA.email, "at": at}) == ("stored", asked)
    # The second finds the pseudonym the first kept.
    assert take({"type": "rights.request", "right": "access", "email": ANNA.email, "at": at}) == ("stored", "")
    unknown_number = {"type": "rights.request", "right": "access", "insurance_number": "Z987654321", "at": at}
    assert take(unknown_number) == ("rejected", "no data subject matches the identifiers given")
    # The kept pseudonym holds nothing to correct or restrict: refused, and nothing is written.
    restrict = {"type": "rights.request", "right": "restriction", "email": ANNA.email, "at": at}
    assert take(restrict) == ("rejected", "no data subject matches the identifiers given")
    with pytest.raises(UnknownSubject), transaction() as session:
        rights.open_request(session, right="rectification", email=ANNA.email, changes={"first_name": "Anne"})
    with transaction() as session:
        requests = {r.right: r for r in session.exec(select(RightsRequest))}
        assert set(requests) == {"access", "portability"} and all(r.due for r in requests.values())
        kept = session.exec(select(AuditEntry).where(AuditEntry.action == "rights.open")).all()
        assert ["known=no" in e.detail for e in kept] == [True, False]
    assert rights.follow_up_rights_requests()["completed"] == 2
    package, document = package_of(the_request("access").id)
    text = json.dumps(package) + document
    assert ANNA.email not in text and ANNA.email.split("@")[0] not in text
    assert {r["processor"] for r in package["processors_now"]} == set()
    assert set(package["controller_data"]) <= {"data_subject", "rights_request"}
    files = {p.name.removesuffix(".enc"): read_outbox(p) for p in outbox_files(str(the_request("portability").id))}
    data = json.loads(files["portability.json"])
    assert data["signups"] == data["bookings"] == data["student_id_orders"] == []


def test_deadlines_and_extensions_as_for_erasure(env):
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    received = utcnow() - timedelta(days=27)
    with transaction() as session:
        request = rights.open_request(
            session, right="rectification", email=ANNA.email, received_at=received, changes={"first_name": "Anne"}
        )
        rid = request.id
    today = berlin_today(utcnow())
    with pytest.raises(ValueError, match="reason"), transaction() as session:
        rights.extend_request(session, rid, 1, " ", today, today)
    with pytest.raises(ValueError, match="personal data"), transaction() as session:
        rights.extend_request(session, rid, 1, "Rückfrage an 030901820", today, today)
    with transaction() as session:
        extended = rights.extend_request(session, rid, 2, "viele Auftragsverarbeiter", today, today)
        # Three months from the Berlin day of receipt, counted as erasure's are (models.deadlines).
        assert extended.extension_months == 2 and extended.due == due_date(received, 2)
    with pytest.raises(ValueError, match="at most 2"), transaction() as session:
        rights.extend_request(session, rid, 1, "noch mehr", today, today)
    # A request received at 23:30 UTC on 31 January is a Berlin 1 February one: due 1 March.
    late = datetime(2027, 1, 31, 23, 30, tzinfo=UTC)
    with transaction() as session:
        request = rights.open_request(session, right="access", email=ANNA.email, received_at=late, now=late)
        assert request.due == date(2027, 3, 1)
        # After the first month an extension comes too late (Art. 12(3)).
        with pytest.raises(ValueError, match="too late"):
            rights.extend_request(session, request.id, 1, "Rückfragen", date(2027, 3, 2), date(2027, 3, 2))
    # Still open months on, both are overdue.
    counts, flagged = rights.mark_deadlines(today + timedelta(days=200))
    assert counts == {"overdue": 2} and rid in {f[0] for f in flagged}


def test_the_changes_of_a_rectification_are_stored_encrypted_and_blanked_when_done(env, monkeypatch):
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    with transaction() as session:
        rid = rights.open_request(session, right="rectification", email=ANNA.email, changes={"last_name": "Neumann"}).id
    with transaction() as session:
        stored = session.get(RightsRequest, rid).changes
        assert stored and b"Neumann" not in stored
    seen: list[Ask] = []

    def fake(ask: Ask) -> Outcome:
        seen.append(ask)
        return Outcome(True, "fields=1")

    monkeypatch.setitem(rights.HANDLERS, Right.rectification, fake)
    assert handle([rid])["completed"] == 1
    assert seen[0].changes == {"last_name": "Neumann"}
    with transaction() as session:
        request = session.get(RightsRequest, rid)
        assert request.changes is None and request.status == "completed" and request.outcome == "fields=1"


def test_a_rectification_joined_while_it_is_answered_stays_open_and_is_answered_again_with_all_values(env, monkeypatch):
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    with transaction() as session:
        rid = rights.open_request(session, right="rectification", email=ANNA.email, changes={"last_name": "Neumann"}).id
    seen: list[Mapping] = []

    def telling_the_processors(ask: Ask) -> Outcome:
        seen.append(dict(ask.changes or {}))
        if len(seen) == 1:  # meanwhile the person corrects their phone number too
            with transaction() as session:
                rights.open_request(session, right="rectification", email=ANNA.email, changes={"phone": "030 901820"})
        return Outcome(True, "fields=1")

    monkeypatch.setitem(rights.HANDLERS, Right.rectification, telling_the_processors)
    assert handle([rid]) == {"still_open": 1}
    assert handle([rid])["completed"] == 1
    assert seen == [{"last_name": "Neumann"}, {"last_name": "Neumann", "phone": "+4930901820"}]


def test_two_runs_never_claim_one_request(env):
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    with transaction() as session:
        rid = rights.open_request(session, right="access", email=ANNA.email).id
    now = utcnow()
    with transaction() as session:
        assert claim(session, "a", now, timedelta(minutes=15)) == [rid]
    with transaction() as session:
        assert claim(session, "b", now, timedelta(minutes=15)) == []
    with transaction() as session:  # a crashed run's claim runs out
        assert claim(session, "b", now + timedelta(minutes=16), timedelta(minutes=15)) == [rid]


def test_the_outbox_is_encrypted_and_purged_after_its_days(env, monkeypatch):
    monkeypatch.setenv("PSYNC_RIGHTS_OUTBOX_DAYS", "30")
    get_settings.cache_clear()
    now = utcnow()
    old = write_outbox(str(uuid.uuid4()), {"a.json": b'{"email": "x@example.de"}'}, now=now - timedelta(days=31))
    new = write_outbox(str(uuid.uuid4()), {"a.json": b"{}"}, now=now)
    assert b"example.de" not in (old / "a.json.enc").read_bytes()
    assert read_outbox(old / "a.json.enc") == b'{"email": "x@example.de"}'
    assert purge_outbox(now) == 1
    assert not old.exists() and new.exists()
    with pytest.raises(ValueError, match="plain id"):
        write_outbox("../escape", {"a": b""})


@pytest.mark.parametrize(
    ("form", "why"),
    [
        ({"right": "access", "email": "nobody@example.de"}, "no data subject"),
        ({"right": "teleport", "email": ANNA.email}, "right must be one of"),
        ({"right": "rectification", "email": ANNA.email, "new_phone": "12"}, "new_phone"),
        ({"right": "access", "email": ANNA.email, "reference": "Anruf 030901820"}, "personal data"),
    ],
)
def test_a_refused_form_fails_in_one_line_and_keeps_nothing_typed_in(env, form, why):
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    with pytest.raises((ValueError, LookupError), match=why):
        handle_rights_request(**form)
    with transaction() as session:
        assert not list(session.exec(select(RightsRequest)))


def _stored_parameters(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        return {"parameters": run.parameters, "state": run.state.type.value, "message": run.state.message or ""}


def test_the_form_keeps_only_the_request_id_and_the_follow_up_tidies_runs_it_never_reached(env):
    """A run of the form blanks what was typed in (the new values too); runs scheduled for
    later or crashed before their body are opened by the follow-up and keep only the id."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Scheduled

    url, base = env
    take_in(base, *lines_of(ANNA)[:2], *lines_of(BERT)[:2])
    state = handle_rights_request(
        right="access", email=ANNA.email, channel="letter", reference="Brief vom 3.", return_state=True
    )
    stored = _stored_parameters(state.state_details.flow_run_id)
    assert stored["parameters"]["email"] == "" and stored["parameters"]["reference"] == ""
    assert stored["parameters"]["request_id"] == str(the_request().id)
    later = utcnow() + timedelta(days=2)
    with get_client(sync_client=True) as client:
        runs = {
            name: client.create_flow_run(handle_rights_request, parameters=parameters, state=state).id
            for name, parameters, state in (
                (
                    "later",
                    {"right": "rectification", "email": BERT.email, "new_last_name": "Bleibneu"},
                    Scheduled(scheduled_time=later),
                ),
                ("crashed", {"right": "portability", "email": BERT.email.upper()}, Crashed()),
                ("unknown", {"right": "access", "email": "niemand@example.de"}, Scheduled(scheduled_time=later)),
            )
        }
    rights.follow_up_rights_requests()
    stored = {name: _stored_parameters(rid) for name, rid in runs.items()}
    text = json.dumps(stored)
    for marker in (*BERT.markers(), "Bleibneu", "niemand@"):
        assert marker not in text, marker
    with transaction() as session:
        by_right = {r.right: r for r in session.exec(select(RightsRequest))}
    assert set(by_right) == {"access", "rectification", "portability"}
    assert stored["later"]["parameters"]["request_id"] == str(by_right["rectification"].id)
    assert stored["later"]["state"] == "SCHEDULED"
    assert stored["crashed"]["parameters"]["request_id"] == str(by_right["portability"].id)
    assert by_right["portability"].status == "completed"  # the follow-up answered it too
    assert stored["unknown"]["state"] == "CANCELLED" and "no data subject matches" in stored["unknown"]["message"]


def test_access_after_an_erasure_lists_the_recipients_as_erased_and_completes(env):
    """The person's data is gone everywhere (CleverReach kept by address, no id of ours):
    the package says whom it went to and that it was erased there, and holds nothing else."""
    from flows import erasure, newsletter

    from support import confirm_manual_tasks

    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    newsletter.sync_newsletter_consents()
    erasure.fan_out_erasure(email=ANNA.email)
    assert confirm_manual_tasks() == 1  # USU: by hand; the request completes
    counts = handle_rights_request(right="access", email=ANNA.email)
    assert counts == {"completed": 1, "access_packages": 1}
    package, page = package_of(the_request().id)
    assert {(e["processor"], e["read"]) for e in package["processors_now"]} == {
        ("cleverreach", "erased"),
        ("usu", "manual"),
    }
    assert all(r["removed_at"] for r in package["recipients"])
    assert ANNA.email not in json.dumps(package) and ANNA.last not in page


def test_the_follow_up_fails_naming_request_ids_only_when_one_is_due_soon_or_overdue(env, monkeypatch):
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    with transaction() as session:
        rid = rights.open_request(session, right="rectification", email=ANNA.email, changes={"last_name": "Neumann"}).id
    # Without its handler the request stays open, and a month on it is overdue.
    monkeypatch.delitem(rights.HANDLERS, Right.rectification)
    with pytest.raises(JobFailed, match=rf"1 rights request\(s\) due within 5 days or overdue: {rid} \(overdue"):
        rights.follow_up_rights_requests(as_of=berlin_today(utcnow()) + timedelta(days=40))
    assert rights.follow_up_rights_requests()["on_time"] == 1


def test_the_deployment_entrypoint_loads_in_a_fresh_process_and_answers_with_the_registered_handlers(env):
    """What a worker does: load ``flows/rights.py`` as a script (Prefect puts ``flows/`` first
    on the path, where ``flows/intake.py`` shadows the intake package), then run the flow;
    the handlers registered by ``flows.access`` answer it."""
    import subprocess
    import sys
    from pathlib import Path

    from prefect.utilities.importtools import import_object

    root = Path(rights.__file__).resolve().parents[1]
    script = (
        "from prefect.utilities.importtools import import_object\n"
        "flow = import_object('flows/rights.py:handle_rights_request')\n"
        "print(flow.name)\n"
    )
    loaded = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "handle-rights-request", loaded.stderr[-500:]
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])
    with transaction() as session:
        rid = rights.open_request(session, right="portability", email=ANNA.email).id
    flow = import_object(f"{root}/flows/rights.py:handle_rights_request")
    assert flow.fn.__module__ != "flows.rights"  # a copy, as on a worker
    assert flow(request_id=str(rid)) == {"completed": 1, "portability_exports": 1}


def test_an_erasure_takes_what_the_outbox_holds_for_the_person_and_leaves_the_others(env):
    """Access packages, portability exports and proofs of consent are the person's data on
    disk: the erasure that completes removes them; another person's stay."""
    from flows import erasure, newsletter
    from flows.consent_proof import consent_proof

    from support import confirm_manual_tasks

    url, base = env
    take_in(base, *lines_of(ANNA)[:2], *lines_of(BERT)[:2])
    newsletter.sync_newsletter_consents()
    handle_rights_request(right="access", email=ANNA.email)
    handle_rights_request(right="portability", email=ANNA.email)
    handle_rights_request(right="access", email=BERT.email)
    consent_proof(email=ANNA.email)
    outbox = get_settings().outbox_dir()
    before = sorted(p.name for p in outbox.iterdir())
    assert len(before) == 4
    erasure.fan_out_erasure(email=ANNA.email)
    assert confirm_manual_tasks() == 1  # USU: by hand; the request completes
    with transaction() as session:
        bert = session.exec(select(RightsRequest.id).where(RightsRequest.subject_id == subject_of(BERT).id)).one()
    assert sorted(p.name for p in outbox.iterdir()) == [str(bert)]


def test_the_calls_of_a_handler_that_fails_still_reach_the_audit_trail_once(env, monkeypatch):
    url, base = env
    take_in(base, *lines_of(ANNA)[:2])

    def failing(ask):
        cleverreach.from_settings(get_settings()).groups()  # a token and a read, then a bug
        raise RuntimeError("a bug after the calls")

    monkeypatch.setitem(rights.HANDLERS, Right.access, failing)
    before = sum(sandbox_state(url)["cleverreach"]["calls"].values())
    with pytest.raises(JobFailed, match="unexpected RuntimeError"):
        handle_rights_request(right="access", email=ANNA.email)
    made = sum(sandbox_state(url)["cleverreach"]["calls"].values()) - before
    with transaction() as session:
        calls = session.exec(select(AuditEntry).where(AuditEntry.action.startswith("call."))).all()
        assert made == 2 and len(calls) == made and all("recovered=" in c.detail for c in calls)
        assert verify(session, get_settings().hmac_key()).ok


class Clock:
    """A settable clock: handlers move it on, as a long answer would."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _two_access_requests(base) -> tuple[uuid.UUID, uuid.UUID]:
    """Anna's and Bert's access requests, Anna's the older: their ids, oldest first."""
    take_in(base, *lines_of(ANNA)[:2], *lines_of(BERT)[:2])
    with transaction() as session:
        first = rights.open_request(
            session, right="access", email=ANNA.email, received_at=utcnow() - timedelta(hours=2)
        )
        second = rights.open_request(
            session, right="access", email=BERT.email, received_at=utcnow() - timedelta(hours=1)
        )
        return first.id, second.id


def test_requests_are_claimed_one_at_a_time_so_no_later_claim_lapses(env, monkeypatch):
    url, base = env
    first_id, second_id = _two_access_requests(base)
    start = utcnow()
    clock = Clock(start)
    claims: list[tuple[datetime, int | None]] = []
    real_claim = rights.claim

    def counted(session, owner, now, lease, *args, **kwargs):
        claims.append((now, kwargs.get("limit")))
        return real_claim(session, owner, now, lease, *args, **kwargs)

    seen: list[tuple[uuid.UUID, dict]] = []

    def slow(ask: Ask) -> Outcome:
        with transaction() as session:
            held = {r.id: (r.claimed_by, r.claimed_until) for r in session.exec(select(RightsRequest))}
        seen.append((ask.request_id, held))
        clock.now += timedelta(minutes=20)  # longer than the lease: a long answer
        return Outcome(True, "answered")

    monkeypatch.setattr(rights, "claim", counted)
    monkeypatch.setitem(rights.HANDLERS, Right.access, slow)
    assert handle(clock=clock)["completed"] == 2

    (answered_first, while_first), (answered_second, while_second) = seen
    assert (answered_first, answered_second) == (first_id, second_id)  # oldest first
    assert while_first[second_id] == (None, None)  # not claimed while the first was answered
    owner, until = while_second[second_id]
    assert owner is not None and until == start + timedelta(minutes=20) + rights.LEASE  # leased when taken
    assert while_second[first_id] == (None, None)  # the first was done and released by then
    # One claim per request, each of one, each at the clock's time then; a last one finds none.
    assert claims == [(start, 1), (start + timedelta(minutes=20), 1), (start + timedelta(minutes=40), 1)]


def test_a_request_another_run_took_meanwhile_is_not_answered_twice(env, monkeypatch):
    url, base = env
    first_id, second_id = _two_access_requests(base)
    answered: list[uuid.UUID] = []

    def meanwhile(ask: Ask) -> Outcome:
        answered.append(ask.request_id)
        if ask.request_id == first_id:  # a form run resumes the second while this one works
            with transaction() as session:
                assert claim(session, "form-run", utcnow(), rights.LEASE, [second_id]) == [second_id]
        return Outcome(True, "answered")

    monkeypatch.setitem(rights.HANDLERS, Right.access, meanwhile)
    assert handle()["completed"] == 1
    assert answered == [first_id]  # the second is the form run's to answer
    with transaction() as session:
        assert session.get(RightsRequest, second_id).claimed_by == "form-run"
