"""The erasure fan-out end to end: every processor in the sandbox, Prefect, the audit trail."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
from scene import (
    ANNA,
    BERT,
    DOC_KEY,
    Person,
    everywhere,
    held_data,
    open_nect_case,
    push_newsletter,
    subject_of,
    take_in,
)
from scene import lines_of as _lines
from sqlalchemy import LargeBinary
from sqlalchemy import select as sa_select
from sqlmodel import SQLModel, select

from connectors.erasure import erasers
from connectors.timify import TimifyEraser
from connectors.transport import RetriableError
from core.clock import berlin_today
from core.settings import get_settings
from flows import bookings, erasure, student_id
from flows.erasure_processors import Hold, Policy
from flows.intake import intake_lines
from models.audit import AuditEntry, verify
from models.db import get_engine, transaction
from models.erasure import ErasureRequest, ErasureTask, UnknownSubject
from models.recipients import Recipient, record_sent_many
from models.subject_index import SubjectMismatch
from models.subjects import DataSubject
from models.types import utcnow

from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES, TEST_KEY, sandbox_state
from support import confirm_manual_tasks as support_confirm

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = TEST_KEY.encode()


@pytest.fixture
def env(against_sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", DOC_KEY)
    get_settings.cache_clear()
    (tmp_path / "nachweis.pdf").write_bytes(PDF_BYTES)
    (tmp_path / "ausweis.png").write_bytes(PNG_BYTES)
    (tmp_path / "foto.jpg").write_bytes(JPEG_BYTES)
    return against_sandbox, tmp_path


# setting the scene ----------------------------------------------------------------------


def ids_at_processors(p: Person) -> list[str]:
    """Ids the processors hold the person under (from our register; long enough to search for)."""
    subject = subject_of(p)
    with transaction() as session:
        rows = session.exec(select(Recipient).where(Recipient.subject_id == subject.id)).all()
        ids = [r.external_id for r in rows if r.external_id and len(r.external_id) >= 8]
        return ids + [p.order, p.video, str(subject.id)]


def request_state(request_id) -> tuple[str, dict[str, str]]:
    with transaction() as session:
        request = session.get(ErasureRequest, request_id)
        tasks = session.exec(select(ErasureTask).where(ErasureTask.request_id == request_id)).all()
        return request.status, {t.processor: t.state for t in tasks}


def the_request() -> uuid.UUID:
    with transaction() as session:
        return session.exec(select(ErasureRequest.id)).one()


def calls(url) -> dict[str, dict[str, int]]:
    state = sandbox_state(url)
    return {name: dict(state[name]["calls"]) for name in ("cleverreach", "timify", "flexperto", "isic", "nect")}


def confirm_manual_tasks(rid) -> int:
    return support_confirm([rid])


def audit_actions() -> set[tuple[str, str | None, str]]:
    with transaction() as session:
        return {(e.action, e.processor, e.outcome) for e in session.exec(select(AuditEntry))}


# the whole way --------------------------------------------------------------------------
def test_a_subject_known_everywhere_is_erased_everywhere_verified_and_nobody_else_is(env):
    url, base = env
    everywhere(url, base, ANNA, BERT)
    anna_ids = ids_at_processors(ANNA)
    before = json.dumps(held_data(url))
    assert all(marker in before for p in (ANNA, BERT) for marker in (p.email, p.order, p.video))

    counts = erasure.fan_out_erasure(email=ANNA.email.upper(), channel="letter", reference="Brief vom 3. März")
    rid = the_request()
    # CleverReach, TIMIFY and Flexperto delete at once and read back absent; the issuer and
    # Nect accept (202) and delete later: the request stays open until they read back 404.
    # USU (no API) builds the newsletter on CleverReach's data: a manual request.
    assert counts == {"verified": 3, "awaiting_processor": 2, "manual_pending": 1, "completed": 0}
    status, states = request_state(rid)
    assert status == "open" and states == {
        "cleverreach": "verified",
        "timify": "verified",
        "flexperto": "verified",
        "isic": "awaiting_processor",
        "nect": "awaiting_processor",
        "usu": "manual_pending",
    }
    assert subject_of(ANNA).first_name == ANNA.first  # our own copy goes last
    assert confirm_manual_tasks(rid) == 1

    assert erasure.follow_up_erasures() == {"verified": 2, "completed": 1}
    status, states = request_state(rid)
    assert status == "completed" and set(states.values()) == {"verified"}

    held = json.dumps(held_data(url))
    for marker in ANNA.markers() + anna_ids:
        assert marker not in held, marker
    for marker in (BERT.email, BERT.first, BERT.order, BERT.video, *ids_at_processors(BERT)):
        assert marker in held, marker
    state = sandbox_state(url)
    assert not any(marker in json.dumps(state) for marker in ANNA.markers())
    with transaction() as session:
        rows = session.exec(select(Recipient).join(DataSubject).where(DataSubject.email.is_(None))).all()
        assert rows and all(r.removed_at for r in rows)
        assert verify(session, KEY).ok
    assert {
        ("erasure.open", None, "opened"),
        ("erasure.erase", "cleverreach", "verified"),
        ("erasure.erase", "isic", "awaiting"),
        ("erasure.verify", "nect", "verified"),
        ("erasure.controller", None, "erased"),
        ("erasure.complete", None, "completed"),
    } <= audit_actions()

    with transaction() as session:
        data = erasure.report(session, rid)
    assert {r["processor"] for r in data["recipients"]} == {"cleverreach", "timify", "flexperto", "isic", "nect", "usu"}
    assert all(
        r["verification"]
        == ("manual: Bestätigung per E-Mail vom 3. März" if r["processor"] == "usu" else "read back: absent (404)")
        and r["verified_at"]
        for r in data["recipients"]
    )
    text = erasure.render_markdown(data)
    assert "| isic | student-id:ISIC-anna | gelöscht und geprüft / erased and verified |" in text
    assert "- Eingangsweg / channel: Brief / letter" in text and "- Aktenzeichen / reference: Brief vom 3. März" in text
    assert not any(m in json.dumps(data) + text for m in ANNA.markers())


def test_no_personal_data_in_logs_artifacts_run_parameters_or_any_table_after_erasure(env, caplog):
    url, base = env
    everywhere(url, base, ANNA, BERT)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    erasure.fan_out_erasure(email=ANNA.email, channel="email", reference="Az. 17-2026")
    confirm_manual_tasks(the_request())
    erasure.follow_up_erasures()
    rid = the_request()
    assert request_state(rid)[0] == "completed"
    for marker in ANNA.markers():
        assert marker not in caplog.text, marker

    # Every column of every table of ours (encrypted bytes aside: they are ciphertext).
    def tables_holding(markers: list[str]) -> set[tuple[str, str]]:
        found = set()
        with get_engine(get_settings().database_url).connect() as connection:
            for table in SQLModel.metadata.sorted_tables:
                columns = [c for c in table.columns if not isinstance(c.type, LargeBinary)]
                for row in connection.execute(sa_select(*columns)):
                    text = " ".join(str(v) for v in row if v is not None)
                    found |= {(table.name, m) for m in markers if m in text}
        return found

    assert tables_holding(ANNA.markers() + ["Sonnenblume7"]) == set()
    # The search is not vacuous: Bert's data is where it was.
    assert {"data_subject", "booking", "isic_order", "consent"} <= {t for t, _ in tables_holding(BERT.markers())}

    # Artifacts and the flow run's stored parameters.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
        runs = client.read_flow_runs()
    report = [a for a in artifacts if a.key == f"erasure-report-{rid}"]
    assert report and "verified" in json.dumps(report[-1].data)
    blob = json.dumps([[a.data, a.description] for a in artifacts], default=str)
    blob += json.dumps([r.parameters for r in runs], default=str) + json.dumps([r.name for r in runs])
    for marker in ANNA.markers():
        assert marker not in blob, marker


def test_a_processor_down_for_the_whole_run_leaves_the_request_open_and_a_rerun_finishes_it(env, monkeypatch, no_sleep):
    url, base = env
    everywhere(url, base, ANNA)

    def down(self, ctx, task):
        raise RetriableError("timify", "customers.delete", 503, 5)

    monkeypatch.setattr(TimifyEraser, "erase", down)
    with pytest.raises(RuntimeError, match="1 processor erasure"):
        erasure.fan_out_erasure(email=ANNA.email, channel="portal")
    rid = the_request()
    status, states = request_state(rid)
    assert status == "open" and states["timify"] == "failed"
    assert states["cleverreach"] == states["flexperto"] == "verified"
    assert ("erasure.erase", "timify", "failed") in audit_actions()
    assert subject_of(ANNA).email == ANNA.email  # nothing of ours erased while one is open

    monkeypatch.undo()
    assert confirm_manual_tasks(rid) == 1
    before = calls(url)
    assert erasure.fan_out_erasure(request_id=rid) == {"verified": 3, "completed": 1}
    after = calls(url)
    # CleverReach and Flexperto were done: not a single call more. The issuer and Nect only
    # read back the deletions they had accepted; nothing was asked for twice.
    assert after["cleverreach"] == before["cleverreach"] and after["flexperto"] == before["flexperto"]
    for name, route in (("isic", "POST /cardholders.delete"), ("nect", "DELETE /v1/cases/{uuid}")):
        assert after[name].get(route) == before[name].get(route) == 1, (name, after[name])
    assert after["timify"] != before["timify"]
    assert request_state(rid) == ("completed", dict.fromkeys(states, "verified"))


def test_asynchronous_deletions_stay_awaiting_until_the_follow_up_reads_them_back(env):
    url, base = env
    take_in(base, *_lines(ANNA)[:2])  # a subscriber, not yet pushed anywhere
    case = open_nect_case(ANNA)
    erasure.fan_out_erasure(email=ANNA.email)
    rid = the_request()
    assert request_state(rid) == ("open", {"nect": "awaiting_processor"})
    assert sandbox_state(url)["nect"]["deletions"]["pending"] == [case]
    with transaction() as session:
        [row] = erasure.report(session, rid)["recipients"]
    assert row["verification"].startswith("deletion accepted") and row["requested_at"] and not row["verified_at"]
    assert erasure.follow_up_erasures() == {"verified": 1, "completed": 1}
    assert request_state(rid) == ("completed", {"nect": "verified"})
    assert sandbox_state(url)["nect"]["cases"] == {}
    assert erasure.follow_up_erasures() == {"completed": 0}


def test_a_manual_processor_gets_a_request_text_and_is_confirmed_with_evidence(env, caplog):
    url, base = env
    caplog.set_level(logging.DEBUG)
    take_in(base, *_lines(ANNA)[:2])
    subject = subject_of(ANNA)
    with transaction() as session:
        record_sent_many(session, "printshop", "flyer:2026", {subject.id: "K-4711"}, utcnow())
    assert erasure.fan_out_erasure(email=ANNA.email) == {"manual_pending": 1, "completed": 0}
    rid = the_request()
    assert request_state(rid) == ("open", {"printshop": "manual_pending"})
    with transaction() as session:
        [manual] = erasure.manual_requests(session, rid)
    text = manual["text"]
    assert ANNA.email in text and str(rid) in text and "Art. 17" in text and "Art. 19" in text
    assert ANNA.last not in text and ANNA.phone not in text  # the address is enough to find them
    assert ANNA.email not in caplog.text

    with transaction() as session, pytest.raises(ValueError, match="personal data"):
        erasure.confirm_manual(session, manual["task_id"], f"Mail von {ANNA.email}", utcnow())
    with transaction() as session:
        erasure.confirm_manual(session, manual["task_id"], "Löschbestätigung per Brief vom 3. März", utcnow())
    assert request_state(rid) == ("completed", {"printshop": "verified"})
    assert ("erasure.manual_confirm", "printshop", "verified") in audit_actions()
    with transaction() as session:
        [row] = erasure.report(session, rid)["recipients"]
        assert row["verification"] == "manual: Löschbestätigung per Brief vom 3. März"
        with pytest.raises(ValueError, match="not waiting"):
            erasure.confirm_manual(session, manual["task_id"], "noch einmal", utcnow())


def test_a_call_note_taken_by_emilie_puts_her_in_the_register_and_the_erasure_writes_to_her(env):
    url, base = env
    take_in(base, *_lines(ANNA)[:2])
    note = json.dumps({"type": "call.note", "email": ANNA.email, "note_id": "N-2026-0042", "at": utcnow().isoformat()})
    take_in(base, note)
    with transaction() as session:  # handed over twice: registered once
        assert [r.outcome for r in intake_lines(session, KEY, [note], now=utcnow())] == ["duplicate"]
    subject = subject_of(ANNA)
    with transaction() as session:
        [row] = session.exec(select(Recipient).where(Recipient.processor == "emilie")).all()
    assert (row.subject_id, row.purpose, row.removed_at) == (subject.id, "call:N-2026-0042", None)
    for bad in ({"note_id": "../x"}, {"note_id": "N-1", "name": ANNA.last}, {"note_id": "N-1", "email": "keine"}):
        line = json.dumps({"type": "call.note", "email": ANNA.email, "at": utcnow().isoformat(), **bad})
        with transaction() as session:
            [result] = intake_lines(session, KEY, [line], now=utcnow())
        assert result.outcome == "rejected" and ANNA.last not in result.reason
    erasure.fan_out_erasure(email=ANNA.email)
    rid = the_request()
    assert request_state(rid) == ("open", {"emilie": "manual_pending"})
    with transaction() as session:
        [manual] = erasure.manual_requests(session, rid)
    assert manual["text"].startswith("An: Milliways Infodesign GmbH") and "Art. 17" in manual["text"]


def test_a_processor_configured_as_manual_is_not_called(env, monkeypatch):
    url, base = env
    take_in(base, *_lines(ANNA)[:2])
    open_nect_case(ANNA)
    monkeypatch.setattr(erasure, "policy_from_settings", lambda s: Policy(manual={"nect": "Nect GmbH, Datenschutz"}))
    before = calls(url)["nect"]
    erasure.fan_out_erasure(email=ANNA.email)
    assert request_state(the_request()) == ("open", {"nect": "manual_pending"})
    assert calls(url)["nect"] == before
    with transaction() as session:
        assert erasure.manual_requests(session, the_request())[0]["text"].startswith("An: Nect GmbH, Datenschutz")


def test_a_legal_hold_restricts_until_its_end_then_the_follow_up_erases(env, monkeypatch):
    url, base = env
    take_in(base, *_lines(ANNA)[:2])
    case = open_nect_case(ANNA)
    hold = Hold("identification records, § 8 GwG", 30)
    monkeypatch.setattr(erasure, "policy_from_settings", lambda s: Policy(holds={"nect:ident": hold}))
    today = berlin_today(utcnow())
    erasure.fan_out_erasure(email=ANNA.email)
    rid = the_request()
    assert request_state(rid) == ("open", {"nect": "restricted"})
    with transaction() as session:
        [row] = erasure.report(session, rid)["recipients"]
    assert row["verification"] == f"restricted until {today + timedelta(days=30)}: {hold.reason}"
    assert case in sandbox_state(url)["nect"]["cases"]
    # Held lawfully: even overdue, the deadline watch does not raise for it.
    assert erasure.watch_erasure_deadlines(as_of=today + timedelta(days=45))["held_lawfully"] == 1

    assert erasure.follow_up_erasures(as_of=today + timedelta(days=30)) == {"completed": 0}
    assert request_state(rid) == ("open", {"nect": "restricted"})
    assert erasure.follow_up_erasures(as_of=today + timedelta(days=31))["awaiting_processor"] == 1
    assert erasure.follow_up_erasures(as_of=today + timedelta(days=31)) == {"verified": 1, "completed": 1}
    assert sandbox_state(url)["nect"]["cases"] == {}
    assert ("erasure.hold", "nect", "restricted") in audit_actions()


def test_an_isic_order_in_progress_is_held_until_the_card_is_issued(env):
    url, base = env
    take_in(base, _lines(ANNA)[4])
    student_id.forward_student_id_orders()  # forwarded: the card is not there yet
    erasure.fan_out_erasure(email=ANNA.email)
    rid = the_request()
    assert request_state(rid) == ("open", {"isic": "restricted"})
    today = berlin_today(utcnow())
    assert erasure.follow_up_erasures(as_of=today + timedelta(days=8)) == {"restricted": 1, "completed": 0}
    requests.post(f"{url}/_sandbox/isic/issue", timeout=5).raise_for_status()
    student_id.sync_student_id_order_status()
    assert erasure.follow_up_erasures(as_of=today + timedelta(days=16))["awaiting_processor"] == 1
    assert erasure.follow_up_erasures(as_of=today + timedelta(days=16)) == {"verified": 1, "completed": 1}
    assert sandbox_state(url)["isic"]["cardholders"] == {}


def test_an_unknown_subject_gets_a_clear_answer_and_nothing_changes(env):
    url, base = env
    take_in(base, *_lines(ANNA)[:2], *_lines(BERT)[:2])
    before, audit_before = calls(url), len(audit_actions())
    with pytest.raises(UnknownSubject, match="no data subject matches"):
        erasure.fan_out_erasure(email="nobody@example.de")
    with pytest.raises(UnknownSubject):
        erasure.fan_out_erasure(email=ANNA.email, subject_id=uuid.uuid4())
    with transaction() as session, pytest.raises(SubjectMismatch):
        erasure.open_erasure_request(session, email=ANNA.email, subject_id=subject_of(BERT).id)
    with transaction() as session, pytest.raises(ValueError, match="personal data"):
        erasure.open_erasure_request(session, email=ANNA.email, reference="Tel. 0170 5550101")
    with transaction() as session, pytest.raises(ValueError, match="name"):
        erasure.open_erasure_request(session, email=ANNA.email, reference="Brief Frau Loeschmann")
    with transaction() as session:
        assert session.exec(select(ErasureRequest)).all() == []
    assert calls(url) == before and len(audit_actions()) == audit_before
    assert subject_of(ANNA).first_name == ANNA.first


def test_two_runs_of_the_same_request_at_once_call_each_processor_once(env, monkeypatch):
    url, base = env
    take_in(base, *_lines(ANNA)[:2])
    push_newsletter(ANNA)
    open_nect_case(ANNA)
    with transaction() as session:
        rid = erasure.open_erasure_request(session, email=ANNA.email).id
    # The first run to claim waits, before its first call, until the second run has
    # claimed too: both are certainly under way at the same time.
    claims, both_claimed = [], threading.Event()
    real_claim = erasure.claim_work

    def claim_work(*args, **kwargs):
        claimed = real_claim(*args, **kwargs)
        claims.append(claimed)
        if len(claims) == 2:
            both_claimed.set()
        return claimed

    def waiting(handler):
        real_erase = type(handler).erase

        def erase(ctx, task):
            assert both_claimed.wait(60)
            return real_erase(handler, ctx, task)

        return erase

    monkeypatch.setattr(erasure, "claim_work", claim_work)
    for name in ("cleverreach", "nect"):
        monkeypatch.setattr(erasers()[name], "erase", waiting(erasers()[name]))
    results, errors = [], []

    def run():
        try:
            results.append(erasure.fan_out_erasure(request_id=rid))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(claims) == 2
    assert sorted(sum(map(len, c.by_processor.values())) for c in claims) == [0, 2]
    state = calls(url)
    assert state["cleverreach"]["DELETE /v3/groups/{gid}/receivers/{email_or_id}"] == 1
    assert state["nect"]["DELETE /v1/cases/{uuid}"] == 1
    # {"completed": 0} and the one that worked (verified, awaiting, USU's manual task, completed)
    assert sorted(map(len, results)) == [1, 4]


def test_processors_are_asked_in_parallel(env, monkeypatch):
    url, base = env
    take_in(base, *_lines(ANNA)[:2])
    subject = subject_of(ANNA)
    with transaction() as session:
        for processor in erasers():
            record_sent_many(session, processor, "x", {subject.id: f"{processor}-id"}, utcnow())
    spans: dict[str, tuple[float, float]] = {}

    def slow(handler):
        def erase(ctx, task):
            start = time.monotonic()
            time.sleep(0.3)  # a processor answering slowly
            spans[handler.processor] = (start, time.monotonic())
            return "verified"

        return erase

    for handler in erasers().values():
        monkeypatch.setattr(handler, "erase", slow(handler))
    assert erasure.fan_out_erasure(email=ANNA.email) == {"verified": 5, "completed": 1}
    starts, ends = [s for s, _ in spans.values()], [e for _, e in spans.values()]
    assert len(spans) == 5 and max(starts) < min(ends)  # all five under way at once


def test_the_deadline_watch_marks_and_raises_naming_request_ids_only(env):
    url, base = env
    take_in(base, *_lines(ANNA)[:2])
    subject = subject_of(ANNA)
    with transaction() as session:
        record_sent_many(session, "printshop", "flyer", {subject.id: None}, utcnow())
    received = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
    with transaction() as session:
        rid = erasure.open_erasure_request(
            session, email=ANNA.email, received_at=received, channel="letter", now=received + timedelta(hours=1)
        ).id
    assert erasure.watch_erasure_deadlines(as_of=date(2026, 2, 20)) == {"on_time": 1}
    with pytest.raises(RuntimeError) as raised:
        erasure.watch_erasure_deadlines(as_of=date(2026, 2, 24))
    assert str(rid) in str(raised.value) and "due_soon, due 2026-02-28" in str(raised.value)
    assert ANNA.email not in str(raised.value)
    with transaction() as session:
        assert session.get(ErasureRequest, rid).urgency == "due_soon"
        erasure.extend_request(
            session,
            rid,
            2,
            "many processors, one without an API",
            informed_on=date(2026, 2, 10),
            today=date(2026, 2, 24),
        )
    assert erasure.watch_erasure_deadlines(as_of=date(2026, 2, 24)) == {"on_time": 1}
    with pytest.raises(RuntimeError, match="overdue, due 2026-04-30"):
        erasure.watch_erasure_deadlines(as_of=date(2026, 5, 1))
    assert ("erasure.deadline", None, "overdue") in audit_actions()
    assert ("erasure.extend", None, "extended") in audit_actions()


# the officer's form: nothing typed in stays with a run ----------------------------------
def _stored_run(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)  # the run's logs reach the API in batches
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        states = client.read_flow_run_states(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return {
        "parameters": run.parameters,
        "state": run.state.type.value,
        "message": run.state.message or "",
        "history": [s.model_dump_json() for s in states],
        "logs": [log.message for log in logs],
    }


def _last_erasure_run() -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["fan-out-erasure"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    return _stored_run(run.id)


@pytest.mark.parametrize(
    ("form", "why"),
    [
        ({"reference": "Anruf von Annegret Loeschmann"}, "reference must not contain the person's name"),
        ({"received_at": "20.11.2026"}, "received_at is not a date"),
        ({"received_at": "2026-02-30"}, "received_at is not a valid calendar date"),
        ({"channel": "fax"}, "channel must be one of"),
        ({"insurance_number": "A123456789"}, "insurance"),
    ],
)
def test_a_refused_form_fails_in_one_line_and_keeps_nothing_typed_in(env, form, why):
    url, base = env
    take_in(base, *_lines(ANNA)[:2])
    before = calls(url)
    with pytest.raises(ValueError, match=why):
        erasure.fan_out_erasure(email=ANNA.email, **form)
    run = _last_erasure_run()
    assert run["state"] == "FAILED" and why.split()[0] in run["message"] and "\n" not in run["message"]
    assert any(why.split()[0] in line for line in run["logs"])  # its log was read too
    text = json.dumps(run)  # parameters, states with their messages, the run's logs
    for marker in (*ANNA.markers(), "A123456789"):
        assert marker not in text, marker
    assert run["parameters"]["email"] == run["parameters"]["reference"] == ""
    with transaction() as session:
        assert session.exec(select(ErasureRequest)).all() == []
    assert calls(url) == before


def test_a_failed_erasure_names_each_failed_processor_and_its_retry_resumes_by_id(env, monkeypatch, no_sleep):
    url, base = env
    everywhere(url, base, ANNA)

    def down(self, ctx, task):
        raise RetriableError("timify", "customers.delete", 503, 5)

    monkeypatch.setattr(TimifyEraser, "erase", down)
    with pytest.raises(RuntimeError):
        erasure.fan_out_erasure(email=ANNA.email, channel="letter", received_at="2026-11-20 14:30")
    run = _last_erasure_run()
    rid = the_request()
    assert run["message"] == (
        f"erasure request {rid}: 1 processor erasure(s) failed: timify (customers.delete: HTTP 503 after 5 "
        "attempt(s)); the request stays open and follow-up-erasures tries again"
    )
    assert run["parameters"] == {
        "email": "",
        "insurance_number": "",
        "subject_id": "",
        "reference": "",
        "received_at": "2026-11-20 14:30",
        "channel": "letter",
        "request_id": str(rid),
    }
    with transaction() as session:
        assert session.get(ErasureRequest, rid).received_at == datetime(2026, 11, 20, 13, 30, tzinfo=UTC)
    # The Art. 19 report as the officer reads it in the UI: receipt in Berlin time to the
    # second, channel, reference, deadline, every recipient's state in words.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        (artifact,) = [a for a in client.read_artifacts() if a.key == f"erasure-report-{rid}"][-1:]
    assert "Eingegangen / received: 2026-11-20 14:30:00 CET" in artifact.description
    assert "Eingangsweg / channel: Brief / letter" in artifact.description
    assert (
        "Aktenzeichen / reference: –" in artifact.description
        and "Frist / deadline (Art. 12(3)): 2026-12-20" in artifact.description
    )
    states = {row["Empfänger / recipient"]: row["Stand / state"] for row in json.loads(artifact.data)}
    assert states["timify"] == "fehlgeschlagen, wird wiederholt / failed, will be retried"
    assert states["cleverreach"] == "gelöscht und geprüft / erased and verified"
    monkeypatch.undo()
    assert confirm_manual_tasks(rid) == 1
    # What Prefect's retry runs: the stored parameters, now the request id alone.
    assert erasure.fan_out_erasure(**run["parameters"]) == {"verified": 3, "completed": 1}


def test_the_follow_up_tidies_runs_the_form_never_reached(env):
    """Scheduled for later, cancelled before it started, crashed before its body: the
    follow-up opens the request each was filed for (a cancelled one is only blanked) and
    leaves the request id alone in the run."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Crashed, Scheduled

    url, base = env
    take_in(base, *_lines(ANNA)[:2], *_lines(BERT)[:2])
    anna, bert = subject_of(ANNA).id, subject_of(BERT).id
    later = utcnow() + timedelta(days=2)
    with get_client(sync_client=True) as client:
        runs = {
            name: client.create_flow_run(erasure.fan_out_erasure, parameters=parameters, state=state).id
            for name, parameters, state in (
                (
                    "later",
                    {"email": ANNA.email, "reference": "Brief vom 3.", "channel": "letter"},
                    Scheduled(scheduled_time=later),
                ),
                ("cancelled", {"email": BERT.email}, Cancelled()),
                ("crashed", {"email": BERT.email.upper(), "received_at": "2026-11-30"}, Crashed()),
                ("unknown", {"email": "niemand@example.de"}, Scheduled(scheduled_time=later)),
            )
        }
    erasure.follow_up_erasures()
    stored = {name: _stored_run(rid) for name, rid in runs.items()}
    text = json.dumps(stored)
    for marker in (*ANNA.markers(), *BERT.markers(), "niemand@", "Brief vom"):
        assert marker not in text, marker
    with transaction() as session:
        requests_by_subject = {r.subject_id: r.id for r in session.exec(select(ErasureRequest))}
    assert set(requests_by_subject) == {anna, bert}
    assert stored["later"]["parameters"]["request_id"] == str(requests_by_subject[anna])
    assert stored["later"]["state"] == "SCHEDULED"  # it will resume the request when it starts
    assert stored["crashed"]["parameters"]["request_id"] == str(requests_by_subject[bert])
    assert stored["cancelled"]["parameters"].get("request_id", "") == ""
    assert stored["unknown"]["state"] == "CANCELLED" and "no data subject matches" in stored["unknown"]["message"]
    # The scheduled run, when it starts, resumes the request (already done by the follow-up).
    assert erasure.fan_out_erasure(**stored["later"]["parameters"]) == {"completed": 0}


def test_after_an_erasure_the_sqlite_files_on_disk_hold_none_of_the_subjects_values(env):
    """Not the SQL view but the bytes: the database file, its WAL and its shared memory."""
    url, base = env
    database = get_settings().database_url
    if not database.startswith("sqlite"):
        pytest.skip("SQLite's files; PostgreSQL's are tested after `psync db compact`")
    everywhere(url, base, ANNA, BERT)
    insurance = "A123456780"
    take_in(
        base,
        json.dumps(
            {
                "type": "booking.request",
                "booking_id": "B-anna-kv",
                "channel": "branch",
                "service_point": "sp-berlin",
                "start": "2027-02-04T10:00:00+01:00",
                "duration_minutes": 30,
                "salutation": "Frau",
                "first_name": ANNA.first,
                "last_name": ANNA.last,
                "phone": ANNA.phone,
                "email": ANNA.email,
                "insurance_number": insurance,
                "at": utcnow().isoformat(),
            }
        ),
    )
    bookings.push_bookings()
    path = Path(database.split("///", 1)[1])
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    markers = [ANNA.email, ANNA.last, ANNA.phone[-7:].replace(" ", ""), insurance, ANNA.iban]

    def found(people_markers: list[str]) -> set[str]:
        blob = b"".join(f.read_bytes() for f in files if f.exists())
        return {m for m in people_markers if m.encode() in blob}

    assert found(markers) == set(markers)  # the search is not vacuous: before, they are all there
    erasure.fan_out_erasure(email=ANNA.email, channel="letter")
    confirm_manual_tasks(the_request())
    assert erasure.follow_up_erasures()["completed"] == 1
    assert found(markers) == set()
    assert files[1].stat().st_size == 0  # checkpointed and truncated
    assert found([BERT.email, BERT.last, BERT.iban]) == {BERT.email, BERT.last, BERT.iban}
    with get_engine(database).connect() as connection:
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1


# the catalogue drives the fan-out ---------------------------------------------------------
def test_the_erasure_flows_name_no_processor():
    """Erasure is processor-agnostic: who erases how comes from the catalogue and the
    connectors' ERASER declarations, never from a name in flows/erasure*.py."""
    from core import catalogue

    names = {p.key for p in catalogue.PROCESSORS} | {n.key for n in catalogue.NOT_RECIPIENTS}
    names |= {p.legal_name.split()[0].strip("(),") for p in catalogue.PROCESSORS}
    names |= {"TIMIFY", "Flexperto", "Emilie", "Crashlytics", "DOCYET"}
    root = Path(__file__).resolve().parents[2] / "flows"
    sources = sorted(root.glob("erasure*.py"))
    assert len(sources) >= 3
    import re

    for source in sources:
        text = source.read_text()
        for name in names:
            assert not re.search(rf"\b{re.escape(name)}\b", text, re.IGNORECASE), f"{source.name} names {name}"


def test_every_api_processor_declares_its_eraser_in_its_connector_module():
    from core import catalogue

    found = erasers()
    assert set(found) == set(catalogue.api_processors())
    for key, eraser in found.items():
        assert eraser.processor == key and type(eraser).__module__ == f"connectors.{key}"
        assert callable(eraser.erase) and callable(eraser.verify) and isinstance(eraser.asynchronous, bool)


def test_the_newsletter_job_makes_usu_a_recipient_beside_cleverreach(env):
    from flows import newsletter

    url, base = env
    take_in(base, *_lines(ANNA)[:2])
    newsletter.sync_newsletter_consents()
    with transaction() as session:
        rows = {(r.processor, r.purpose): r for r in session.exec(select(Recipient))}
    assert set(rows) == {("cleverreach", "consent:newsletter"), ("usu", "consent:newsletter")}
    assert rows["cleverreach", "consent:newsletter"].confirmed_at is not None
    assert rows["usu", "consent:newsletter"].removed_at is None  # "may hold": USU works on it at CleverReach


def test_usu_gets_the_german_request_reminders_on_a_settable_clock_and_a_confirmation_with_evidence(env, monkeypatch):
    url, base = env
    monkeypatch.setenv("PSYNC_ERASURE_MANUAL_REMINDER_DAYS", "10")
    get_settings.cache_clear()
    take_in(base, *_lines(ANNA)[:2])
    push_newsletter(ANNA)
    assert erasure.fan_out_erasure(email=ANNA.email, channel="letter") == {
        "verified": 1,
        "manual_pending": 1,
        "completed": 0,
    }
    rid = the_request()
    with transaction() as session:
        (item,) = erasure.manual_requests(session, rid)
    assert item["processor"] == "usu" and item["reminders"] == 0
    text = item["text"]
    assert text.startswith("An: USU GmbH, Berlin")
    for needed in ("Art. 17 DSGVO", "Art. 19 DSGVO", "Art. 6 Abs. 1 lit. a DSGVO", str(rid), ANNA.email):
        assert needed in text, needed

    today = berlin_today(utcnow())
    # Day 9 after the text was made available: no reminder; day 10: the first; day 19: none
    # more; day 20: the second.
    erasure.follow_up_erasures(as_of=today + timedelta(days=9))
    with transaction() as session:
        assert erasure.manual_requests(session, rid)[0]["reminders"] == 0
    assert erasure.follow_up_erasures(as_of=today + timedelta(days=10))["manual_reminders"] == 1
    assert "manual_reminders" not in erasure.follow_up_erasures(as_of=today + timedelta(days=19))
    assert erasure.follow_up_erasures(as_of=today + timedelta(days=20))["manual_reminders"] == 1
    with transaction() as session:
        (item,) = erasure.manual_requests(session, rid)
    assert item["reminders"] == 2 and "2. Erinnerung" in item["text"] and "Art. 19 DSGVO" in item["text"]
    assert ("erasure.manual_reminder", "usu", "due") in audit_actions()

    with transaction() as session, pytest.raises(ValueError, match="evidence"):
        erasure.confirm_manual(session, uuid.UUID(item["task_id"]), "", utcnow())
    with transaction() as session:
        erasure.confirm_manual(session, uuid.UUID(item["task_id"]), "Schreiben der USU vom 4. März", utcnow())
    status, states = request_state(rid)
    assert status == "completed" and states == {"cleverreach": "verified", "usu": "verified"}
    with transaction() as session:
        rows = {r["processor"]: r["verification"] for r in erasure.report(session, rid)["recipients"]}
    assert rows["usu"] == "manual: Schreiben der USU vom 4. März"
    assert ("erasure.manual_confirm", "usu", "verified") in audit_actions()


def test_emilie_call_notes_and_a_processor_configured_manual_get_the_manual_path(env, monkeypatch):
    url, base = env
    monkeypatch.setenv("PSYNC_ERASURE_MANUAL_PROCESSORS", json.dumps({"timify": "TerminApp GmbH, Datenschutz"}))
    get_settings.cache_clear()
    take_in(base, *_lines(ANNA)[:3])
    bookings.push_bookings()
    subject = subject_of(ANNA)
    with transaction() as session:
        record_sent_many(session, "emilie", "call:C-17", {subject.id: None}, utcnow())
    before = calls(url)
    counts = erasure.fan_out_erasure(email=ANNA.email, channel="phone")
    assert counts == {"manual_pending": 2, "completed": 0}
    assert calls(url)["timify"] == before["timify"]  # configured manual: not a call to its API
    with transaction() as session:
        texts = {i["processor"]: i["text"] for i in erasure.manual_requests(session, the_request())}
    assert texts["emilie"].startswith("An: Milliways Infodesign GmbH (Telefonsekretariat Emilie®), Hannover")
    assert "Annahme von Anrufen" in texts["emilie"] and "Art. 19 DSGVO" in texts["emilie"]
    assert texts["timify"].startswith("An: TerminApp GmbH, Datenschutz")
    assert "Art. 6 Abs. 1 Satz 1 lit. b und f DSGVO" in texts["timify"]
