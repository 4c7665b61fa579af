"""Tests for the sandbox's Nect imitation (all shapes assumed), over HTTP only."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from sandbox.app import create_app

NC = "/nect/v1"
KEY = {"x-api-key": "sandbox-nect-key"}
REF = "0123456789abcdef0123456789abcdef"
REF2 = "fedcba9876543210fedcba9876543210"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def client():
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def api(client):
    client.headers.update(KEY)
    return client


def state(client) -> dict:
    return client.get("/_sandbox/state").json()["nect"]


def open_case(api, reference=REF) -> dict:
    r = api.post(f"{NC}/cases", json={"reference": reference})
    assert r.status_code == 201, r.text
    return r.json()


def assert_error(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json() == {"error": {"code": code, "message": r.json()["error"]["message"]}}


# -- auth -------------------------------------------------------------------


def test_routes_need_the_api_key(client):
    assert_error(client.get(f"{NC}/cases"), 401, "unauthorized")
    assert_error(client.get(f"{NC}/cases", headers={"x-api-key": "wrong"}), 401, "unauthorized")
    assert_error(client.post(f"{NC}/cases", json={"reference": REF}), 401, "unauthorized")
    bearer = client.get(f"{NC}/cases", headers={"Authorization": "Bearer sandbox-nect-key"})
    assert_error(bearer, 401, "unauthorized")  # the key goes in its own header only
    assert client.get(f"{NC}/cases", headers=KEY).json() == {"items": []}
    assert state(client)["cases"] == {} and state(client)["calls"] == {"GET /v1/cases": 1}


# -- cases ------------------------------------------------------------------


def test_open_case_from_the_pseudonym_alone_then_lookups(api):
    case = open_case(api)
    assert list(case) == ["caseUuid", "status", "reference"]
    assert UUID.fullmatch(case["caseUuid"])
    assert case["status"] == "created" and case["reference"] == REF
    assert api.get(f"{NC}/cases", params={"reference": REF}).json() == {"items": [case]}
    assert api.get(f"{NC}/cases", params={"reference": REF2}).json() == {"items": []}
    assert api.get(f"{NC}/cases/{case['caseUuid']}").json() == case
    assert_error(api.get(f"{NC}/cases/00000000-0000-4000-8000-000000000000"), 404, "not_found")
    assert state(api)["creates"] == {REF: 1} and list(state(api)["cases"]) == [case["caseUuid"]]


def test_second_case_for_a_reference_is_a_conflict(api):
    case = open_case(api)
    r = api.post(f"{NC}/cases", json={"reference": REF})
    assert_error(r, 409, "conflict")
    assert REF not in r.text
    other = open_case(api, REF2)
    assert other["caseUuid"] != case["caseUuid"]
    assert state(api)["creates"] == {REF: 1, REF2: 1}


@pytest.mark.parametrize(
    "body",
    [
        {"reference": REF, "firstName": "Erika"},  # seed 002: the pseudonym and nothing else
        {"reference": REF, "email": "erika@example.de"},
        {"reference": REF, "dateOfBirth": "1980-01-01"},
        {"reference": "erika@example.de"},  # not a pseudonym
        {"reference": REF.upper()},
        {"reference": REF[:31]},
        {"reference": 123},
        {},
        [REF],
    ],
)
def test_anything_but_a_pseudonymous_reference_is_refused(api, body):
    r = api.post(f"{NC}/cases", json=body)
    assert_error(r, 400, "invalid_request")
    assert "Erika" not in r.text and "erika" not in r.text and "1980" not in r.text
    assert state(api)["cases"] == {} and state(api)["creates"] == {}


def test_refusal_names_the_extra_key_but_not_its_value(api):
    r = api.post(f"{NC}/cases", json={"reference": REF, "lastName": "Mustermann"})
    assert "lastName" in r.json()["error"]["message"] and "Mustermann" not in r.text
    assert_error(api.post(f"{NC}/cases", content=b"{not json"), 400, "invalid_request")


# -- deletion ---------------------------------------------------------------


def test_delete_is_asynchronous_and_completes_on_the_second_get(api):
    case = open_case(api)
    uuid = case["caseUuid"]
    r = api.delete(f"{NC}/cases/{uuid}")
    assert r.status_code == 202 and r.json() == {"caseUuid": uuid, "status": "deletion_pending"}
    assert api.delete(f"{NC}/cases/{uuid}").status_code == 202  # still pending
    assert api.get(f"{NC}/cases", params={"reference": REF}).json()["items"][0]["status"] == "deletion_pending"
    assert_error(api.post(f"{NC}/cases", json={"reference": REF}), 409, "conflict")  # not gone yet
    assert state(api)["deletions"] == {"pending": [uuid], "completed": []}
    first = api.get(f"{NC}/cases/{uuid}")
    assert first.status_code == 200 and first.json()["status"] == "deletion_pending"
    assert_error(api.get(f"{NC}/cases/{uuid}"), 404, "not_found")
    assert_error(api.get(f"{NC}/cases/{uuid}"), 404, "not_found")
    assert_error(api.delete(f"{NC}/cases/{uuid}"), 404, "not_found")
    assert api.get(f"{NC}/cases", params={"reference": REF}).json() == {"items": []}
    s = state(api)
    assert s["cases"] == {} and s["deletions"] == {"pending": [], "completed": [uuid]}
    again = open_case(api)  # the reference is free again
    assert again["caseUuid"] != uuid and state(api)["creates"] == {REF: 2}


def test_delete_of_an_unknown_case_is_404(api):
    assert_error(api.delete(f"{NC}/cases/00000000-0000-4000-8000-000000000000"), 404, "not_found")
    assert state(api)["deletions"] == {"pending": [], "completed": []}


# -- control ----------------------------------------------------------------


def test_complete_control_marks_the_identification_done(api):
    case = open_case(api)
    r = api.post("/_sandbox/nect/complete", json={"caseUuid": case["caseUuid"]})
    assert r.status_code == 200 and r.json() == {**case, "status": "completed"}
    assert api.get(f"{NC}/cases/{case['caseUuid']}").json()["status"] == "completed"
    missing = api.post("/_sandbox/nect/complete", json={"caseUuid": "00000000-0000-4000-8000-000000000000"})
    assert_error(missing, 404, "not_found")
    assert_error(api.post("/_sandbox/nect/complete", json={}), 400, "invalid_request")
    api.delete(f"{NC}/cases/{case['caseUuid']}")
    assert_error(api.post("/_sandbox/nect/complete", json={"caseUuid": case["caseUuid"]}), 409, "conflict")


def test_control_routes_need_no_key(client):
    assert client.post("/_sandbox/nect/complete-deletions").json() == {"completed": []}


def test_complete_deletions_control_finishes_pending_deletions_at_once(api):
    one, two, kept = open_case(api), open_case(api, REF2), open_case(api, "a" * 32)
    api.delete(f"{NC}/cases/{one['caseUuid']}")
    api.delete(f"{NC}/cases/{two['caseUuid']}")
    r = api.post("/_sandbox/nect/complete-deletions")
    assert r.json() == {"completed": [one["caseUuid"], two["caseUuid"]]}
    assert_error(api.get(f"{NC}/cases/{one['caseUuid']}"), 404, "not_found")  # no pending answer left
    assert api.get(f"{NC}/cases/{kept['caseUuid']}").json()["status"] == "created"
    assert list(state(api)["cases"]) == [kept["caseUuid"]]
    assert api.post("/_sandbox/nect/complete-deletions").json() == {"completed": []}


# -- state, reset, errors, faults --------------------------------------------


def test_state_counts_calls_by_template_and_reset_empties_it(api):
    case = open_case(api)
    api.get(f"{NC}/cases/{case['caseUuid']}")
    api.get(f"{NC}/cases", params={"reference": REF})
    api.delete(f"{NC}/cases/{case['caseUuid']}")
    assert state(api)["calls"] == {
        "POST /v1/cases": 1,
        "GET /v1/cases/{uuid}": 1,
        "GET /v1/cases": 1,
        "DELETE /v1/cases/{uuid}": 1,
    }
    assert api.post("/_sandbox/reset").status_code == 200
    assert state(api) == {"cases": {}, "creates": {}, "calls": {}, "deletions": {"pending": [], "completed": []}}
    assert api.get(f"{NC}/cases").status_code == 200  # the key still works: it is not a token


def test_unknown_route_and_method_use_nect_error_shape(api):
    assert_error(api.get(f"{NC}/nothing-here"), 404, "not_found")
    assert_error(api.put(f"{NC}/cases"), 405, "method_not_allowed")


@pytest.mark.parametrize(("kind", "status", "code"), [("503", 503, "server_error"), ("429_plain", 429, "rate_limited")])
def test_error_faults_answer_in_nect_shape_before_any_change(api, kind, status, code):
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": [kind]})
    r = api.post(f"{NC}/cases", json={"reference": REF})
    assert r.headers["x-sandbox-fault"] == kind
    assert_error(r, status, code)
    api.post("/_sandbox/faults", json={"fault_rate": 0.0})
    assert state(api)["cases"] == {} and state(api)["creates"] == {}
    assert api.get("/_sandbox/state").json()["faults"][kind] == 1


def test_dropped_answer_to_a_create_still_opened_the_case(api):
    # Why a client must look the reference up before it opens a case again.
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["drop"]})
    r = api.post(f"{NC}/cases", json={"reference": REF})
    assert r.headers["x-sandbox-fault"] == "drop"
    with pytest.raises(ValueError):
        json.loads(r.content)  # the body was cut off
    api.post("/_sandbox/faults", json={"fault_rate": 0.0})
    assert_error(api.post(f"{NC}/cases", json={"reference": REF}), 409, "conflict")
    assert len(api.get(f"{NC}/cases", params={"reference": REF}).json()["items"]) == 1
    assert state(api)["creates"] == {REF: 1}


def test_token_expiry_fault_leaves_the_api_key_valid(api):
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["token_expiry"]})
    r = api.get(f"{NC}/cases")
    assert r.status_code == 200 and r.headers["x-sandbox-fault"] == "token_expiry"
    api.post("/_sandbox/faults", json={"fault_rate": 0.0})
    assert api.get(f"{NC}/cases").status_code == 200
