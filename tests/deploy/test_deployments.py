"""The deployments for real: a `prefect server`, `prefect deploy --all` of prefect.yaml, a
process worker, and every deployment run with parameters through the REST API the UI uses.

The stack is the one `make up` starts (psync.stack), on free loopback ports with its
scheduler off (so only the runs this test creates run). The worker's flow runs share the
database with this test process, which takes events in and reads the outcome: a SQLite file,
or in the PostgreSQL pass a schema of the test cluster, as in production.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlmodel import select

from core.settings import get_settings
from flows.intake import intake_lines
from models.audit import AuditEntry
from models.bookings import Booking
from models.consent import ConsentRecord, ConsentState
from models.db import transaction
from models.erasure import ErasureRequest, personal_data_left
from models.isic import IsicOrder, OrderStatus
from models.types import utcnow
from psync.demo_erasure import _lines
from psync.stack import Stack

from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES, TEST_KEY, confirm_manual_tasks, sandbox_state

PEOPLE = [
    ("depl.eins@example.de", "Anna", "Einsatz", "+49 170 5550911", "DE02120300000000202051"),
    ("depl.zwei@example.de", "Bernd", "Zweifel", "+49 170 5550922", "DE89370400440532013000"),
    ("depl.drei@example.de", "Clara", "Dreher", "+49 170 5550933", "DE02500105170137075030"),
]
PENDING = "depl.offen@example.de"  # signs up, never confirms
STARTED: list[str] = []  # every flow run this module created
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

pytestmark = [pytest.mark.deploy, pytest.mark.database]


@pytest.fixture
def as_worker(stack, monkeypatch):
    """This process sees the worker's database, keys and processors."""
    env = stack.environment()
    for name, value in env.items():
        if name.startswith("PSYNC_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield stack
    get_settings.cache_clear()


# --- the Prefect REST API, as the UI calls it -------------------------------------------
def _api(stack: Stack, method: str, path: str, **body) -> dict:
    # The server answers 503 when its SQLite database is busy; Prefect's clients (and the
    # UI) try again, and so does this. A request that got no answer in time (the server's
    # SQLite busy with the other test worker's stack on this 2-core machine: twice in CI,
    # once on a flow run's creation) is sent again when that changes nothing: a read (GET,
    # a filter), or a creation with an idempotency key, which the server answers with the
    # run it made the first time.
    again = method == "GET" or path.endswith("/filter") or "idempotency_key" in body
    for attempt in range(20):
        try:
            answer = requests.request(method, f"{stack.api_url}{path}", json=body or None, timeout=30)
        except requests.ReadTimeout:
            if not again or attempt == 19:
                raise
            continue
        if answer.status_code != 503:
            break
        time.sleep(0.5)
    assert answer.ok, (method, path, answer.status_code, answer.text[:500])
    return answer.json()


def deployment(stack: Stack, name: str) -> dict:
    return _api(stack, "GET", f"/deployments/name/{name}/{name}")


def start(stack: Stack, name: str, **parameters) -> str:
    """Create a flow run of deployment `name` with `parameters`, as the UI's form does."""
    path = f"/deployments/{deployment(stack, name)['id']}/create_flow_run"
    run = _api(stack, "POST", path, parameters=parameters, idempotency_key=uuid.uuid4().hex)
    STARTED.append(run["id"])
    return run["id"]


def wait(stack: Stack, *run_ids: str, timeout: float = 240) -> list[dict]:
    deadline = time.monotonic() + timeout
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = [_api(stack, "GET", f"/flow_runs/{rid}") for rid in run_ids]
        if all(r["state"]["type"] in FINAL for r in runs):
            return runs
        time.sleep(0.5)
    raise AssertionError(f"runs not finished: {[(r['name'], r['state']['type']) for r in runs]}; see {stack.state}")


def completed(stack: Stack, **runs: dict) -> None:
    """Start the named deployments at once with their parameters; all must complete."""
    ids = [start(stack, name.replace("_", "-"), **params) for name, params in runs.items()]
    for run in wait(stack, *ids):
        assert run["state"]["type"] == "COMPLETED", (run["name"], run["state"].get("message"), str(stack.state))


# --- the test ---------------------------------------------------------------------------
def _take_in(folder: Path) -> None:
    settings, now = get_settings(), utcnow()
    for name, data in (
        ("erase-nachweis.pdf", PDF_BYTES),
        ("erase-ausweis.png", PNG_BYTES),
        ("erase-foto.jpg", JPEG_BYTES),
    ):
        (folder / name).write_bytes(data)
    events = [e for i, p in enumerate(PEOPLE) for e in _lines(i, *p, now)]
    events.append(
        {
            "type": "consent.signup",
            "list": "newsletter",
            "email": PENDING,
            "salutation": "Herr",
            "first_name": "Otto",
            "last_name": "Offen",
            "ip": "192.0.2.60",
            "at": (now - timedelta(hours=1)).isoformat(),
            "source": "web",
            "policy_version": "2026-01",
        }
    )
    lines = [json.dumps(e, ensure_ascii=False) for e in events]
    with transaction() as session:
        results = intake_lines(
            session,
            TEST_KEY.encode(),
            lines,
            now=now,
            service_points=settings.timify.service_points,
            base_dir=folder,
            document_key=settings.document_key_bytes(),
        )
    assert {r.outcome for r in results} == {"stored"}


def test_every_deployment_runs_from_the_server_through_a_worker(as_worker, tmp_path):
    stack = as_worker
    sandbox = stack.sandbox_url
    _take_in(tmp_path)
    later = (utcnow() + timedelta(days=120)).date().isoformat()

    # The deployments the UI lists carry their typed forms and schedules.
    names = {d["name"] for d in _api(stack, "POST", "/deployments/filter")}
    assert len(names) == 15
    form = deployment(stack, "fan-out-erasure")["parameter_openapi_schema"]["properties"]
    assert {"email", "insurance_number", "subject_id", "received_at", "channel", "reference"} <= set(form)
    assert deployment(stack, "sync-newsletter-consents")["schedules"]

    # Day one: every job's push, at once.
    completed(
        stack,
        sync_newsletter_consents={"lists": ["newsletter"], "records_per_task": 1000},
        push_bookings={"records_per_task": 100},
        forward_student_id_orders={},
        watch_erasure_deadlines={},
    )
    state = sandbox_state(sandbox)
    receivers = state["cleverreach"]["groups"]["1001"]["receivers"]
    assert sorted(r["email"] for r in receivers.values()) == sorted(p[0] for p in PEOPLE)  # not the pending one

    # The officer's proof of consent, from its form: written encrypted to the outbox.
    proof = start(stack, "consent-proof", email=PEOPLE[2][0])
    (run,) = wait(stack, proof)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["parameters"] == {"email": ""}  # the form's e-mail is not kept
    (folder,) = Path(stack.environment()["PSYNC_RIGHTS_OUTBOX"]).iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["nachweis.html.enc", "nachweis.md.enc", "written_at"]
    assert len(state["timify"]["appointments"]) == 3 and len(state["flexperto"]["customers"]) == 3
    assert len(state["isic"]["cardholders"]) == 3

    # One unsubscribes by the newsletter's link; the issuer issues the cards.
    requests.post(
        f"{sandbox}/_sandbox/cleverreach/unsubscribe", json={"email": PEOPLE[0][0]}, timeout=10
    ).raise_for_status()
    requests.post(f"{sandbox}/_sandbox/isic/issue", timeout=10).raise_for_status()
    completed(
        stack,
        pull_newsletter_unsubscribes={"lists": ["newsletter"]},
        sync_student_id_order_status={"batch_size": 50},
        expire_unconfirmed_optins={"as_of": (utcnow() + timedelta(days=31)).isoformat()},
    )
    # Months later: chats and documents past retention; an erasure request from the form.
    completed(
        stack,
        purge_video_chat_data={"as_of": later},
        purge_student_id_documents={"as_of": later},
        sync_newsletter_consents={},
    )
    # The deletion rules: TIMIFY customers go 30 days after their last appointment; nothing
    # is left past any rule's period (the purges above ran first).
    completed(stack, enforce_retention={"as_of": later})
    assert sandbox_state(sandbox)["timify"]["customers"] == {}
    erasure = start(stack, "fan-out-erasure", email=PEOPLE[1][0], channel="letter", reference="Brief vom 20.11.")
    (run,) = wait(stack, erasure)
    # Completed, or failed visibly while a processor deletes asynchronously; the follow-up
    # carries it on either way.
    assert run["state"]["type"] in {"COMPLETED", "FAILED"}, run["state"]
    assert PEOPLE[1][0] not in json.dumps(run["parameters"])  # the form's e-mail is not kept
    requests.post(f"{sandbox}/_sandbox/isic/complete-deletions", timeout=10).raise_for_status()
    confirm_manual_tasks()  # USU builds the newsletter at CleverReach: no API, the officer confirms
    completed(stack, follow_up_erasures={})

    state = sandbox_state(sandbox)
    everything = json.dumps({k: state[k] for k in ("cleverreach", "timify", "flexperto", "isic", "nect")})
    assert PEOPLE[1][0] not in everything and PEOPLE[1][2] not in everything
    receivers = state["cleverreach"]["groups"]["1001"]["receivers"]
    assert sorted(r["email"] for r in receivers.values()) == [PEOPLE[2][0]]  # unsubscribed one removed
    assert state["flexperto"]["customers"] == {}
    with transaction() as session:
        consents = {r.state for r in session.exec(select(ConsentRecord))}
        assert consents == {ConsentState.confirmed, ConsentState.withdrawn, ConsentState.expired}
        assert {o.status for o in session.exec(select(IsicOrder))} >= {OrderStatus.issued}
        (request,) = session.exec(select(ErasureRequest)).all()
        assert request.status == "completed"
        assert personal_data_left(session, request.subject_id) == []
        assert len(session.exec(select(Booking).where(Booking.phone.is_not(None))).all()) == 2
        runs = {row.flow_run_id for row in session.exec(select(AuditEntry))}
    # Each run that did something wrote to the audit trail under its own run id.
    assert len(runs - {None}) >= 10 and runs - {None} <= set(STARTED)


def test_a_failed_run_names_the_processor_and_the_reason_but_no_one(as_worker):
    stack = as_worker
    sandbox = stack.sandbox_url
    email = "fehler.fall@example.de"
    now = utcnow()
    lines = [
        json.dumps(e)
        for e in (
            {
                "type": "consent.signup",
                "list": "newsletter",
                "email": email,
                "first_name": "Fritz",
                "last_name": "Fehler",
                "ip": "192.0.2.70",
                "at": (now - timedelta(minutes=5)).isoformat(),
                "source": "web",
                "policy_version": "2026-01",
            },
            {
                "type": "consent.confirm",
                "list": "newsletter",
                "email": email,
                "ip": "192.0.2.71",
                "at": now.isoformat(),
            },
        )
    ]
    with transaction() as session:
        results = intake_lines(session, TEST_KEY.encode(), lines, now=now)
    assert [r.outcome for r in results] == ["stored", "stored"], [r.reason for r in results]
    requests.post(
        f"{sandbox}/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["503"]}, timeout=10
    ).raise_for_status()
    try:
        (run,) = wait(stack, start(stack, "sync-newsletter-consents", lists=["newsletter"]))
    finally:
        requests.post(f"{sandbox}/_sandbox/faults", json={"fault_rate": 0.0}, timeout=10).raise_for_status()
    assert run["state"]["type"] == "FAILED"
    message = run["state"]["message"]
    assert "cleverreach" in message and "HTTP 503" in message, message
    assert email not in message and "Fehler" not in message
    # The next run finishes the job.
    completed(stack, sync_newsletter_consents={"lists": ["newsletter"]})
    receivers = sandbox_state(sandbox)["cleverreach"]["groups"]["1001"]["receivers"]
    assert email in [r["email"] for r in receivers.values()]


def test_psync_run_by_hand_runs_on_the_stacks_resident_runner(as_worker, tmp_path):
    """`make up`, then `psync run`: the run happens in the runner `up` started (psync/runner.py),
    as a flow run on the stack's server like any other, with `psync run`'s output."""
    stack = as_worker
    assert "runner" in stack._pids()
    assert stat.S_IMODE(stack.runner_socket.stat().st_mode) == 0o600
    env = {**stack.environment(), "PSYNC_RUNNER_SOCKET": str(stack.runner_socket)}

    def psync_run(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "psync.cli", "run", "push-bookings", "-p", "records_per_task=100"],
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def latest() -> dict:
        runs = _api(
            stack,
            "POST",
            "/flow_runs/filter",
            flows={"name": {"any_": ["push-bookings"]}},
            sort="EXPECTED_START_TIME_DESC",
        )
        return runs[0]

    done = psync_run()
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), dict)
    assert (stack.state / "runner.log").read_text().count("runner: psync run push-bookings") == 1
    run = latest()
    assert run["deployment_id"] is None and run["state"]["type"] == "COMPLETED", run["state"]
    assert run["parameters"]["records_per_task"] == 100

    # Without the runner (PSYNC_RUNNER_SOCKET empty) the run happens in the calling process,
    # on the same server, with the same output.
    alone = psync_run(PSYNC_RUNNER_SOCKET="")
    assert (alone.returncode, alone.stdout) == (0, done.stdout), alone.stderr
    assert (stack.state / "runner.log").read_text().count("runner: psync run push-bookings") == 1
    assert latest()["id"] != run["id"] and latest()["state"]["type"] == "COMPLETED"
