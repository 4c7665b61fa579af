"""The officer's erasure form on a real server and worker: what is typed into it is in
none of Prefect's tables afterwards, whatever became of the run (refused, scheduled and
cancelled, crashed before its body), a failed erasure reads as one line without a
traceback, and Prefect's Retry of it resumes the request by its id and completes.

Prefect's database is the stack's own SQLite file (its PREFECT_HOME); it is read through
SQL, every text of every row of every table (flow runs, states, logs, events, artifacts).
What SQLite keeps of superseded row versions in its file until they are overwritten is the
subject of the disk-level checks, not of this one.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from datetime import timedelta

import pytest
import requests
from sqlmodel import select

from flows.intake import intake_lines
from models.db import transaction
from models.erasure import ErasureRequest, RequestStatus
from models.types import utcnow

from deploy.test_deployments import _api, as_worker, completed, deployment, start, wait  # noqa: F401  (as_worker: a fixture)
from support import TEST_KEY, confirm_manual_tasks, sandbox_state

pytestmark = [pytest.mark.deploy, pytest.mark.database]

# (e-mail, first name, last name): each signs up and confirms the newsletter.
REFUSED = ("form.abgelehnt@example.de", "Maximilian", "Beispielmann")
CANCELLED = ("form.storniert@example.de", "Cornelia", "Stornofeld")
CRASHED = ("form.abgestuerzt@example.de", "Kasimir", "Absturzberg")
RETRIED = ("form.wiederholt@example.de", "Rebekka", "Wiederholdt")


def _take_in(*people: tuple[str, str, str]) -> None:
    now = utcnow()
    lines = []
    for email, first, last in people:
        lines += [
            {
                "type": "consent.signup",
                "list": "newsletter",
                "email": email,
                "first_name": first,
                "last_name": last,
                "ip": "192.0.2.80",
                "at": (now - timedelta(hours=1)).isoformat(),
                "source": "web",
                "policy_version": "2026-01",
            },
            {
                "type": "consent.confirm",
                "list": "newsletter",
                "email": email,
                "ip": "192.0.2.81",
                "at": (now - timedelta(minutes=50)).isoformat(),
            },
        ]
    with transaction() as session:
        results = intake_lines(session, TEST_KEY.encode(), [json.dumps(line) for line in lines], now=now)
    assert {r.outcome for r in results} == {"stored"}, [r.reason for r in results]


def _prefect_texts(stack) -> dict[str, str]:
    """Every table of the Prefect server's database, its rows as one text each."""
    path = stack.state / "prefect-home" / "prefect.db"
    assert path.exists(), f"Prefect's database is not where the stack keeps it: {path}"
    texts = {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
            texts[table] = "\n".join(" ".join(str(v) for v in row if v is not None) for row in rows)
    return texts


def _markers() -> list[str]:
    return [value for person in (REFUSED, CANCELLED, CRASHED) for value in person] + ["form.abgelehnt"]


def _create_later(stack, **parameters) -> str:
    """A run of the form scheduled for tomorrow, as the UI's "Start: later" creates it."""
    dep = _api(stack, "GET", "/deployments/name/fan-out-erasure/fan-out-erasure")
    later = (utcnow() + timedelta(days=1)).isoformat()
    state = {"type": "SCHEDULED", "state_details": {"scheduled_time": later}}
    path = f"/deployments/{dep['id']}/create_flow_run"
    return _api(stack, "POST", path, parameters=parameters, state=state, idempotency_key=uuid.uuid4().hex)["id"]


def _set_state(stack, run_id: str, state: dict) -> None:
    answer = _api(stack, "POST", f"/flow_runs/{run_id}/set_state", state=state, force=True)
    assert answer["status"] == "ACCEPT", answer


def _logs_of(stack, run_id: str) -> list[dict]:
    """The run's logs as the Logs tab shows them, once the run's process has sent its last
    (Prefect ships logs in batches; the run's state can be final a moment before)."""
    deadline = time.monotonic() + 60
    while True:
        logs = _api(stack, "POST", "/logs/filter", logs={"flow_run_id": {"any_": [run_id]}}, limit=200)
        if any(log["message"].startswith("Finished in state") for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def _requests_by_state() -> dict[str, str]:
    with transaction() as session:
        return {str(r.id): r.status for r in session.exec(select(ErasureRequest))}


def test_nothing_typed_into_the_form_stays_in_prefect_whatever_became_of_the_run(as_worker):  # noqa: F811 - the fixture imported above
    stack = as_worker
    _take_in(REFUSED, CANCELLED, CRASHED)

    # A value outside the form's schema: the API refuses it before it stores anything.
    dep = deployment(stack, "fan-out-erasure")
    bad = requests.post(
        f"{stack.api_url}/deployments/{dep['id']}/create_flow_run",
        timeout=30,
        json={"parameters": {"email": REFUSED[0], "received_at": "gestern"}},
    )
    assert bad.status_code == 409 and "received_at" in bad.text and REFUSED[0] not in bad.text, bad.text[:300]

    # Refused: the reference names the person.
    refused = start(
        stack, "fan-out-erasure", email=REFUSED[0], channel="phone", reference=f"Anruf von {REFUSED[1]} {REFUSED[2]}"
    )
    (run,) = wait(stack, refused)
    assert run["state"]["type"] == "FAILED"
    assert run["state"]["message"] == "reference must not contain the person's name"
    # Scheduled for later, then cancelled before it started; scheduled, then crashed.
    cancelled = _create_later(stack, email=CANCELLED[0], channel="letter", reference="Brief vom 2.12.")
    _set_state(stack, cancelled, {"type": "CANCELLED", "message": "taken back"})
    crashed = _create_later(stack, email=CRASHED[0], received_at="2026-12-01 09:15")
    _set_state(stack, crashed, {"type": "CRASHED", "message": "the worker's machine went down"})
    texts = _prefect_texts(stack)
    assert CANCELLED[0] in texts["flow_run"] and CRASHED[0] in texts["flow_run"]  # the search sees them
    assert _requests_by_state() == {}

    completed(stack, follow_up_erasures={})

    runs = {
        name: _api(stack, "GET", f"/flow_runs/{rid}")
        for name, rid in (("refused", refused), ("cancelled", cancelled), ("crashed", crashed))
    }
    requests_now = _requests_by_state()
    # The crashed run's request was opened (and, newsletter only, completed) by the follow-up;
    # the run keeps its id, so a retry would resume it. The cancelled one opened nothing.
    assert list(requests_now.values()) == [RequestStatus.completed]
    assert runs["crashed"]["parameters"]["request_id"] in requests_now
    assert runs["cancelled"]["parameters"].get("request_id", "") == ""
    for name, run in runs.items():
        for field in ("email", "insurance_number", "subject_id", "reference"):
            assert run["parameters"].get(field, "") == "", (name, field)
    texts = _prefect_texts(stack)
    found = {(table, m) for table, text in texts.items() for m in _markers() if m in text}
    assert found == set(), found
    assert texts["log"] and texts["flow_run_state"]  # the search covered logs and states
    # The server's and the worker's own logs (the sandbox's is the processors' side).
    logs = "".join((stack.state / f"{name}.log").read_text(errors="replace") for name in ("server", "worker"))
    assert [m for m in _markers() if m in logs] == []


def test_a_failed_erasure_reads_as_one_line_and_its_retry_resumes_the_request(as_worker):  # noqa: F811 - the fixture imported above
    stack = as_worker
    sandbox = stack.sandbox_url
    _take_in(RETRIED)
    completed(stack, sync_newsletter_consents={"lists": ["newsletter"]})
    requests.post(
        f"{sandbox}/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["503"]}, timeout=10
    ).raise_for_status()
    try:
        (run,) = wait(stack, start(stack, "fan-out-erasure", email=RETRIED[0], channel="email"))
    finally:
        requests.post(f"{sandbox}/_sandbox/faults", json={"fault_rate": 0.0}, timeout=10).raise_for_status()
    assert run["state"]["type"] == "FAILED"
    message = run["state"]["message"]
    assert "\n" not in message and "1 processor erasure(s) failed: cleverreach (" in message, message
    assert "HTTP 503" in message and RETRIED[0] not in message
    request_id = run["parameters"]["request_id"]
    assert request_id and run["parameters"]["email"] == ""

    # The Logs tab: the reason once at ERROR, no traceback at INFO or above.
    shown = [log for log in _logs_of(stack, run["id"]) if log["level"] >= 20]
    assert shown and not [log["message"] for log in shown if "Traceback" in log["message"]]
    assert [log["message"] for log in shown if log["level"] >= 40 and log["message"] == message] == [message]

    # USU builds the newsletter at CleverReach (no API): the officer confirms its erasure.
    confirm_manual_tasks([uuid.UUID(request_id)])
    # Retry, as the UI's button does: the same run, its stored parameters, AwaitingRetry.
    _set_state(stack, run["id"], {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"})
    (retried,) = wait(stack, run["id"])
    assert retried["state"]["type"] == "COMPLETED", retried["state"]
    assert retried["run_count"] >= 2 and retried["parameters"]["request_id"] == request_id
    assert _requests_by_state()[request_id] == RequestStatus.completed
    receivers = sandbox_state(sandbox)["cleverreach"]["groups"]["1001"]["receivers"]
    assert RETRIED[0] not in [r["email"] for r in receivers.values()]
