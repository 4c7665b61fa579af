"""The Prefect server's scheduler for real: the stack `make up` starts (psync.stack), with the
scheduler on as in a deployment that follows the README, creates the scheduled runs of every
deployment in prefect.yaml that has an active schedule, and a run it created goes through the
worker to Completed.

test_deployments.py runs its stack with the scheduler off (only the runs it creates run), so
it cannot see a scheduler that fails: with SQLAlchemy 2.1 the Prefect 3.8 server's scheduler
failed on every cycle ("Can't evaluate bulk DML statement") and no scheduled run ever
appeared (issue 13; pyproject.toml pins SQLAlchemy below 2.1).

The schedules come due every 5 minutes to daily, so the test moves one scheduler-created run
of a job that needs no processor data to now and waits for that very run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import yaml

from flows.retention import PURGES
from psync.stack import Stack

from deploy.test_deployments import FINAL, _api

pytestmark = [pytest.mark.deploy, pytest.mark.database]

# Runs appear within seconds of `prefect deploy` (the server's recent-deployments loop, 5 s);
# the main loop runs every 60 s, so 90 s is one missed cycle and a margin.
RUNS_WITHIN = 90.0
COMPLETED_WITHIN = 90.0
POLL = 1.0
# Succeeds on an empty database and calls no processor.
DUE_NOW = "watch-erasure-deadlines"


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """The scheduler on: what `make up` runs (the other settings are tests/deploy/conftest.py's)."""
    return {}


def _with_active_schedule(stack: Stack) -> set[str]:
    """The deployments of prefect.yaml with an active schedule."""
    spec = yaml.safe_load((stack.root / "prefect.yaml").read_text())
    return {d["name"] for d in spec["deployments"] if any(s.get("active", True) for s in d.get("schedules") or [])}


def _scheduled_by_scheduler(stack: Stack, names: dict[str, str]) -> dict[str, list[dict]]:
    """The SCHEDULED runs the scheduler created, by deployment name."""
    runs = _api(stack, "POST", "/flow_runs/filter", flow_runs={"state": {"type": {"any_": ["SCHEDULED"]}}}, limit=200)
    found: dict[str, list[dict]] = {}
    for run in runs:
        if run["auto_scheduled"]:
            found.setdefault(names.get(run["deployment_id"], run["deployment_id"]), []).append(run)
    return found


def _server_errors(stack: Stack, lines: int = 8) -> str:
    log = stack.state / "server.log"
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line for line in text if "ERROR" in line or "Error" in line]
    return "\n".join(errors[-lines:]) or "(no errors logged)"


def _move_to_now(stack: Stack, run: dict) -> None:
    """Make a scheduled run due now, as the UI's "Start now" does with a scheduled run."""
    now = datetime.now(UTC).isoformat()
    state = {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": now}}
    answer = _api(stack, "POST", f"/flow_runs/{run['id']}/set_state", state=state, force=True)
    assert answer["status"] == "ACCEPT", answer


def test_the_scheduler_creates_the_scheduled_runs_and_the_worker_runs_them(stack):
    expected = _with_active_schedule(stack)
    deployments = _api(stack, "POST", "/deployments/filter")
    names = {d["id"]: d["name"] for d in deployments}
    assert len(names) == 15 and len(expected) == 9 and expected <= set(names.values())
    assert "fan-out-erasure" not in expected  # started by hand only
    assert not expected & set(PURGES)  # run by enforce-retention, as its subflows

    # Every deployment with an active schedule gets its scheduled runs.
    began = time.monotonic()
    found: dict[str, list[dict]] = {}
    while time.monotonic() - began < RUNS_WITHIN:
        found = _scheduled_by_scheduler(stack, names)
        if expected <= set(found):
            break
        time.sleep(POLL)
    took = time.monotonic() - began
    missing = sorted(expected - set(found))
    assert not missing, (
        f"the Prefect server's scheduler created no scheduled run within {RUNS_WITHIN:.0f} s for "
        f"{len(missing)} of {len(expected)} deployments: {missing}. "
        f"See {stack.state / 'server.log'}; its last errors:\n{_server_errors(stack)}"
    )
    assert set(found) == expected, f"runs scheduled for a deployment without a schedule: {set(found) - expected}"
    print(f"\nscheduler: {sum(map(len, found.values()))} SCHEDULED runs of {len(found)} deployments after {took:.1f} s")

    # One of them, made due now, runs on the worker: the same run, still the scheduler's.
    run = min(found[DUE_NOW], key=lambda r: r["expected_start_time"])
    _move_to_now(stack, run)
    began = time.monotonic()
    while time.monotonic() - began < COMPLETED_WITHIN:
        current = _api(stack, "GET", f"/flow_runs/{run['id']}")
        if current["state"]["type"] in FINAL:
            break
        time.sleep(POLL)
    state = current["state"]
    assert state["type"] == "COMPLETED", (
        f"the scheduled run {run['name']} of {DUE_NOW} is {state['type']} after "
        f"{time.monotonic() - began:.0f} s: {state.get('message')}; see {stack.state}/worker.log"
    )
    assert current["auto_scheduled"] and current["deployment_id"] == run["deployment_id"]
    assert (current["created_by"] or {}).get("type") == "SCHEDULE", current["created_by"]
    print(f"scheduler: {run['name']} of {DUE_NOW} completed {time.monotonic() - began:.1f} s after it was due")
