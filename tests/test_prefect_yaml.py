"""prefect.yaml stays valid: every deployment names a real flow with real parameters, never
overlaps itself, and shows a typed, described, bounded form in the Prefect UI."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
from prefect.exceptions import ParameterTypeError
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from flows.registry import FLOWS
from flows.retention import PURGES
from models.erasure import Channel

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = CONFIG["deployments"]
BY_NAME = {d["name"]: d for d in DEPLOYMENTS}


def _flow(name: str):
    return load_flow_from_entrypoint(str(ROOT / BY_NAME[name]["entrypoint"]))


def _schema(name: str) -> dict:
    """The parameter schema `prefect deploy` stores with the deployment (what the UI renders)."""
    return parameter_schema(_flow(name)).model_dump_for_openapi()


SCHEMAS = {name: _schema(name) for name in BY_NAME}


def _field(schema: dict, prop: dict) -> dict:
    """A property with its $ref resolved and an optional's non-null branch merged in."""
    field = dict(prop)
    branches = [b for b in field.pop("anyOf", []) if b.get("type") != "null"]
    assert len(branches) <= 1, prop
    if branches:
        field.update(branches[0])
    if "$ref" in field:
        field.update(schema["definitions"][field.pop("$ref").rsplit("/", 1)[-1]])
    return field


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
        # Started by hand (the officer's form), on a schedule, or by enforce-retention (a
        # deletion rule's own purge, run as its subflow); never none of them.
        run_by_retention = deployment["name"] in PURGES
        assert deployment["schedules"] or "manual" in deployment["tags"] or run_by_retention, deployment["name"]
        assert {s["timezone"] for s in deployment["schedules"]} <= {"Europe/Berlin"}
        assert deployment["work_pool"]["name"] == "psync-process"


def test_no_secrets_in_the_file():
    text = (ROOT / "prefect.yaml").read_text().lower()
    for word in ("sandbox-secret", "client_secret:", "password:", "token:", "pseudonym_key:"):
        assert word not in text


# concurrency ------------------------------------------------------------------------------
def test_prefect_deploy_reads_the_file():
    model = PrefectYamlModel.model_validate(CONFIG)
    assert [d.name for d in model.deployments] == [d["name"] for d in DEPLOYMENTS]


def test_no_sync_overlaps_itself_only_the_officers_form_runs_side_by_side():
    unlimited = []
    for deployment in DEPLOYMENTS:
        limit = deployment.get("concurrency_limit")
        if limit is None:
            unlimited.append(deployment["name"])
            continue
        assert limit == {"limit": 1, "collision_strategy": "CANCEL_NEW"}, deployment["name"]
        options = ConcurrencyOptions(collision_strategy=limit["collision_strategy"])
        assert options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    # Manual, one request per run; runs claim their erasure tasks (rights requests) in the
    # database. A proof of consent only reads and writes a file of its own.
    assert unlimited == ["fan-out-erasure", "consent-proof", "handle-rights-request"]
    for name in unlimited:
        assert BY_NAME[name]["schedules"] == [] and "manual" in BY_NAME[name]["tags"]


# the UI's forms ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_parameter_is_typed_and_described(name):
    schema = SCHEMAS[name]
    assert schema["properties"], f"{name}: no parameters at all?"
    for parameter, prop in schema["properties"].items():
        field = _field(schema, prop)
        assert field.get("type") not in (None, "null"), f"{name}.{parameter} has no type"
        description = prop.get("description") or ""
        assert len(description) > 15 and "\n" not in description, f"{name}.{parameter}: {description!r}"
        if field["type"] == "integer":
            # Every number the officer can type in is bounded, and says so in words.
            assert field["minimum"] >= 1, f"{name}.{parameter}"
            assert f"{field['maximum']:,}" in description, f"{name}.{parameter}: {description!r}"


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_defaults_fill_the_whole_form_and_hold_no_personal_data(name):
    schema = SCHEMAS[name]
    # A schedule cannot fill in a required parameter.
    assert not schema.get("required"), name
    defaults = json.dumps({k: p.get("default") for k, p in schema["properties"].items()})
    assert "@" not in defaults and not re.search(r"\d{6}", defaults), defaults


BOUNDS = {
    ("sync-newsletter-consents", "batch_size"): {"minimum": 1, "maximum": 1000},
    ("sync-newsletter-consents", "records_per_task"): {"minimum": 1, "maximum": 100_000},
    ("expire-unconfirmed-optins", "batch_size"): {"minimum": 1, "maximum": 10_000},
    ("push-bookings", "records_per_task"): {"minimum": 1, "maximum": 5000},
    ("push-bookings", "booking_ids"): {"type": "array", "maxItems": 1000},
    ("purge-video-chat-data", "batch_size"): {"minimum": 1, "maximum": 5000},
    ("forward-student-id-orders", "records_per_task"): {"minimum": 1, "maximum": 2000},
    ("sync-student-id-order-status", "batch_size"): {"minimum": 1, "maximum": 2000},
    ("purge-student-id-documents", "batch_size"): {"minimum": 1, "maximum": 5000},
    ("fan-out-erasure", "email"): {"type": "string", "maxLength": 254},
    ("fan-out-erasure", "insurance_number"): {"type": "string", "maxLength": 20},
    ("fan-out-erasure", "reference"): {"type": "string", "maxLength": 200},
    ("consent-proof", "email"): {"type": "string", "maxLength": 254},
    ("expire-unconfirmed-optins", "as_of"): {"type": "string", "format": "date-time"},
    ("purge-video-chat-data", "as_of"): {"type": "string", "format": "date"},
    ("follow-up-erasures", "as_of"): {"type": "string", "format": "date"},
    ("watch-erasure-deadlines", "as_of"): {"type": "string", "format": "date"},
    ("enforce-retention", "as_of"): {"type": "string", "format": "date"},
    ("handle-rights-request", "email"): {"type": "string", "maxLength": 254},
    ("handle-rights-request", "reference"): {"type": "string", "maxLength": 200},
    ("handle-rights-request", "right"): {
        "enum": ["access", "portability", "rectification", "restriction", "objection"]
    },
    ("follow-up-rights-requests", "as_of"): {"type": "string", "format": "date"},
}


@pytest.mark.parametrize(("name", "parameter"), sorted(BOUNDS))
def test_the_bounds_the_form_shows(name, parameter):
    field = _field(SCHEMAS[name], SCHEMAS[name]["properties"][parameter])
    assert {k: field.get(k) for k in BOUNDS[name, parameter]} == BOUNDS[name, parameter]


def test_list_choices_are_enums():
    for name in ("sync-newsletter-consents", "pull-newsletter-unsubscribes"):
        lists = _field(SCHEMAS[name], SCHEMAS[name]["properties"]["lists"])
        items = SCHEMAS[name]["definitions"][lists["items"]["$ref"].rsplit("/", 1)[-1]]
        assert items["enum"] == ["newsletter", "service_offers"]
    booking = _field(SCHEMAS["push-bookings"], SCHEMAS["push-bookings"]["properties"]["booking_ids"])
    assert booking["items"]["pattern"].startswith("^")


def test_fan_out_erasure_is_the_officers_form():
    schema = SCHEMAS["fan-out-erasure"]
    props = schema["properties"]
    assert sorted(props, key=lambda p: props[p]["position"]) == [
        "email",
        "insurance_number",
        "subject_id",
        "received_at",
        "channel",
        "reference",
        "request_id",
    ]
    for name, prop in props.items():
        # Plain text boxes: empty means not given; no "None" switch to click first.
        assert prop["type"] == "string" and "anyOf" not in prop and prop["default"] in ("", "email"), name
        # A readable title in both languages, not the parameter's name.
        assert " / " in prop["title"] and prop["title"] != name, prop["title"]
    for identifier in ("email", "insurance_number", "subject_id"):
        assert "Give at least one of e-mail, insurance number, subject id" in props[identifier]["description"]
    assert props["channel"]["enum"] == [c.value for c in Channel] and props["channel"]["default"] == "email"
    assert "Berlin" in props["received_at"]["title"] and "Berlin" in props["received_at"]["description"]
    assert "no names" in props["reference"]["description"]
    assert "Leave empty for a new request" in props["request_id"]["description"]
    assert "resume" in props["request_id"]["title"]


FORM_CASES = [
    ("insurance_number", "A123456780", True),
    ("insurance_number", "A 123 456 780", True),
    ("insurance_number", "A12345678", False),
    ("insurance_number", "123456789A", False),
    ("subject_id", "0192f1a2-7b3c-7d4e-8f90-123456789abc", True),
    ("subject_id", "not-a-uuid", False),
    ("request_id", "0192f1a27b3c7d4e8f90123456789abc", True),
    ("request_id", "42", False),
    ("received_at", "2026-11-20", True),
    ("received_at", "2026-11-20 14:30", True),
    ("received_at", "2026-11-20T14:30:05+01:00", True),
    ("received_at", "20.11.2026", False),
    ("received_at", "yesterday", False),
    ("channel", "fax", False),
    ("channel", "letter", True),
    ("reference", "x" * 200, True),
    ("reference", "x" * 201, False),
    ("email", "e" * 250 + "@x.de", False),
]


@pytest.mark.parametrize(("name", "value", "accepted"), FORM_CASES)
def test_every_bound_of_the_erasure_form_is_in_its_schema(name, value, accepted):
    """The patterns and limits the UI shows and the API enforces before a run is stored."""
    assert (validate({name: value}, SCHEMAS["fan-out-erasure"]) == []) is accepted


def test_the_api_refuses_a_form_outside_the_bounds():
    """What the server checks before it stores a run (enforce_parameter_schema)."""
    form = {
        "email": "erika@example.de",
        "received_at": "2026-03-02T09:00:00+01:00",
        "channel": "letter",
        "reference": "AZ 17/26",
    }
    schema = SCHEMAS["fan-out-erasure"]
    assert validate(form, schema) == []
    for bad in (
        {"reference": "x" * 201},
        {"channel": "fax"},
        {"subject_id": "not-a-uuid"},
        {"email": "e" * 250 + "@x.de"},
    ):
        assert validate({**form, **bad}, schema), bad
    bookings = SCHEMAS["push-bookings"]
    assert validate({"records_per_task": 5000}, bookings) == []
    for bad in (
        {"records_per_task": 0},
        {"records_per_task": 5001},
        {"booking_ids": ["B-1"] * 1001},
        {"booking_ids": ["../x"]},
    ):
        assert validate(bad, bookings), bad


def test_a_run_bounds_the_batch_sizes_but_leaves_the_officers_text_to_the_flow():
    """A bound on the erasure form inside the run would fail it before the flow forgets the
    identifiers typed in, and Prefect logs every parameter of a run it refuses; the flow's
    own checks refuse the same text and forget them."""
    with pytest.raises(ParameterTypeError, match="records_per_task"):
        _flow("push-bookings").validate_parameters({"records_per_task": 0})
    with pytest.raises(ParameterTypeError, match="batch_size"):
        _flow("sync-newsletter-consents").validate_parameters({"batch_size": 1001})
    accepted = _flow("fan-out-erasure").validate_parameters(
        {
            "email": "erika@example.de",
            "reference": "x" * 201,
            "received_at": "gestern",
            "channel": "fax",
            "subject_id": 42,
            "insurance_number": None,
        }
    )
    assert accepted["reference"] == "x" * 201 and accepted["received_at"] == "gestern"
    assert accepted["subject_id"] == "42" and accepted["insurance_number"] == ""


def test_every_schedule_says_its_zone_in_words():
    """The UI lists a deployment's schedule without its zone: the description names it."""
    for deployment in DEPLOYMENTS:
        if deployment["schedules"]:
            assert "Europe/Berlin" in " ".join(deployment["description"].split()), deployment["name"]


def test_handle_rights_request_is_the_officers_form_too():
    props = SCHEMAS["handle-rights-request"]["properties"]
    assert sorted(props, key=lambda p: props[p]["position"])[:2] == ["right", "email"]
    for name, prop in props.items():
        assert prop["type"] == "string" and "anyOf" not in prop and " / " in prop["title"], name
        assert not re.search(r"\d{6}", json.dumps(prop.get("default"))), name
    schema = SCHEMAS["handle-rights-request"]
    assert validate({"right": "access", "email": "erika@example.de", "new_birth_date": "1980-05-17"}, schema) == []
    for bad in ({"right": "teleport"}, {"new_birth_date": "17.05.1980"}, {"reference": "x" * 201}):
        assert validate(bad, schema), bad


def test_every_entrypoint_loads_as_a_worker_loads_it():
    """A worker loads ``flows/x.py:fn`` as a script with ``flows/`` put first on sys.path (and
    left there), so a flow module that imports the ``intake`` package, directly or through
    what it imports, finds ``flows/intake.py`` instead and fails to load. In a fresh process,
    as on a worker: every entrypoint of the file, one after the other."""
    import subprocess
    import sys

    entrypoints = [d["entrypoint"] for d in DEPLOYMENTS]
    script = (
        "import sys\n"
        "from prefect.utilities.importtools import import_object\n"
        "failed = []\n"
        "for entrypoint in sys.argv[1:]:\n"
        "    try:\n"
        "        import_object(entrypoint)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{entrypoint}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *entrypoints], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.strip() == "", done.stdout
