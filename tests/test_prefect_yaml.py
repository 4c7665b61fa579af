"""prefect.yaml stays valid: every deployment names a real flow with real parameters."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

from flows.registry import FLOWS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = CONFIG["deployments"]


def test_every_registered_flow_is_deployed_once():
    assert sorted(d["name"] for d in DEPLOYMENTS) == sorted(FLOWS)


def test_entrypoints_load_flows_of_the_same_name_with_known_parameters():
    for deployment in DEPLOYMENTS:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        assert flow.name == deployment["name"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters") or {}) <= accepted
        assert flow.description, f"{flow.name} needs a docstring for the UI"


def test_schedules_run_on_berlin_time_on_the_process_pool():
    for deployment in DEPLOYMENTS:
        # Started by hand (the officer's form) or on a schedule; never neither.
        assert deployment["schedules"] or "manual" in deployment["tags"], deployment["name"]
        assert {s["timezone"] for s in deployment["schedules"]} <= {"Europe/Berlin"}
        assert deployment["work_pool"]["name"] == "psync-process"


def test_no_secrets_in_the_file():
    text = (ROOT / "prefect.yaml").read_text().lower()
    for word in ("sandbox-secret", "client_secret:", "password:", "token:", "pseudonym_key:"):
        assert word not in text
