"""Tests for the sandbox's TIMIFY imitation (and faults on the new prefixes), over HTTP only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sandbox.app import create_app

TM = "/timify"
COMPANY = "5f0c1a2b3c4d5e6f7a8b9c0d"
APP = {"appid": "psync-sandbox", "appsecret": "sandbox-secret"}
RECORDED = Path(__file__).parents[1] / "connectors" / "recorded" / "timify"
EMAIL, FIRST, LAST = "65c39ebd07a04b9210cccb96", "65c39ebd07a04b9210cccb98", "65c39ebd07a04b9210cccb99"
PHONE, BIRTHDAY, SALUTATION, INSURANCE = (f"65c39ebd07a04b9210cccb9{c}" for c in "abcd")
BRANCH, VIDEO = "65e6d029d9d6e5c324d2aa01", "65e6d029d9d6e5c324d2aa02"
HAMBURG, BERLIN = "65e6d029d9d6e5c324d2bb01", "65e6d029d9d6e5c324d2bb02"
HEX24 = re.compile(r"[0-9a-f]{24}")
ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def get_token(client) -> dict:
    r = client.post(f"{TM}/v1/auth/token", json=APP)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def client():
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def api(client):
    """TestClient carrying a raw TIMIFY token and the company id."""
    client.headers.update({"authorization": get_token(client)["accessToken"], "company-id": COMPANY})
    return client


def state(client) -> dict:
    return client.get("/_sandbox/state").json()["timify"]


def new_customer(api, external_id="p-1", fields=None):
    fields = [{"id": EMAIL, "value": "erika@example.de"}] if fields is None else fields
    r = api.post(f"{TM}/v1/customers", json={"externalId": external_id, "customfields": fields})
    assert r.status_code == 201, r.text
    return r.json()["data"]


def booking(customer_id, external_id="a-1", start="2026-03-29 10:00", **changes) -> dict:
    body = {
        "externalId": external_id,
        "service_id": BRANCH,
        "resource_ids": [HAMBURG],
        "startDate": start,
        "duration": 30,
        "customers": [customer_id],
        "notes": "Termin",
    }
    return {**body, **changes}


def assert_error(r, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == 0 and set(body["error"]) == {"code", "message"}
    if code:
        assert body["error"]["code"] == code


# -- auth -------------------------------------------------------------------


def test_token_and_refresh_answer_unwrapped(client):
    body = get_token(client)
    assert set(body) == {"accessToken", "expires", "refreshToken"} and body["expires"] == 3600
    r = client.post(f"{TM}/v1/auth/refreshtoken", json={"refreshtoken": body["refreshToken"]})
    assert r.status_code == 200
    fresh = r.json()
    assert set(fresh) == {"accessToken", "expires", "refreshToken"}
    assert fresh["accessToken"] != body["accessToken"]
    headers = {"authorization": fresh["accessToken"], "company-id": COMPANY}
    assert client.get(f"{TM}/v1/customers", headers=headers).status_code == 200
    assert_error(client.post(f"{TM}/v1/auth/token", json={**APP, "appsecret": "wrong"}), 401)
    assert_error(client.post(f"{TM}/v1/auth/refreshtoken", json={"refreshtoken": "nope"}), 401)
    assert state(client)["tokens"] == 2


def test_routes_need_token_then_company_id(client):
    token = get_token(client)["accessToken"]
    url = f"{TM}/v1/customers"
    assert_error(client.get(url, headers={"company-id": COMPANY}), 401, "Unauthorized")
    assert_error(client.get(url, headers={"authorization": "bogus", "company-id": COMPANY}), 401)
    assert_error(client.get(url, headers={"authorization": token}), 403, "Forbidden")
    assert_error(client.get(url, headers={"authorization": token, "company-id": "0" * 24}), 403)
    for value in (token, f"Bearer {token}"):
        assert client.get(url, headers={"authorization": value, "company-id": COMPANY}).status_code == 200
    assert state(client)["calls"] == {"POST /v1/auth/token": 1, "GET /v1/customers": 2}  # refused ones not counted


def test_expired_and_revoked_tokens_are_refused_but_refresh_works(api):
    refresh = get_token(api)["refreshToken"]
    assert api.post("/_sandbox/timify/expire-tokens").json()["revoked"] == 2
    assert_error(api.get(f"{TM}/v1/customers"), 401)
    new = api.post(f"{TM}/v1/auth/refreshtoken", json={"refreshtoken": refresh}).json()["accessToken"]
    assert api.get(f"{TM}/v1/customers", headers={"authorization": new}).status_code == 200
    with TestClient(create_app(token_ttl_s=0)) as c:
        token = get_token(c)
        assert token["expires"] == 0
        r = c.get(f"{TM}/v1/customers", headers={"authorization": token["accessToken"], "company-id": COMPANY})
        assert_error(r, 401)


# -- customer fields and customers -------------------------------------------


def test_customfields_are_the_recorded_ones_plus_ours(api):
    body = api.get(f"{TM}/v1/customers/customfields").json()
    recorded = json.loads((RECORDED / "customer-fields.json").read_text())["data"]
    assert body["status"] == 1 and body["total"] == 7 and body["data"][:3] == recorded
    assert all(list(f) == list(recorded[0]) for f in body["data"])
    extra = {f["id"]: (f["type"], f["translationKey"], f["label"]) for f in body["data"][3:]}
    assert extra == {
        PHONE: ("PHONE", "customerFields.basic.mobilePhone", None),
        BIRTHDAY: ("DATE", "customerFields.basic.birthday", None),
        SALUTATION: ("SELECT", "customerFields.basic.salutation", None),
        INSURANCE: ("TEXT", None, "Krankenversichertennummer"),
    }
    assert body["data"][5]["selectOptions"] == [{"value": "Frau"}, {"value": "Herr"}, {"value": "divers"}]


def test_customer_create_get_and_duplicate(api):
    fields = [
        {"id": EMAIL, "value": "erika@example.de"},
        {"id": BIRTHDAY, "value": "1980-05-17"},
        {"id": SALUTATION, "value": "Frau"},
        {"id": INSURANCE, "value": "A123456780"},
    ]
    r = api.post(f"{TM}/v1/customers", json={"externalId": "p-1", "customfields": fields})
    assert r.status_code == 201 and r.json()["status"] == 1
    customer = r.json()["data"]
    assert list(customer) == ["id", "externalId", "customfields", "createdAt", "updatedAt"]
    assert HEX24.fullmatch(customer["id"]) and ISO_Z.fullmatch(customer["createdAt"])
    assert customer["externalId"] == "p-1" and customer["customfields"] == fields
    assert api.get(f"{TM}/v1/customers/{customer['id']}").json() == {"data": customer, "status": 1}
    assert api.get(f"{TM}/v1/customers/p-1", params={"external": 1}).json()["data"] == customer
    assert_error(api.get(f"{TM}/v1/customers/p-1"), 404, "NotFound")  # without external=1 it is an id
    duplicate = api.post(f"{TM}/v1/customers", json={"externalId": "p-1", "customfields": []})
    assert_error(duplicate, 409, "DuplicateExternalId")
    assert state(api)["creates"]["customers"] == {"p-1": 1}


@pytest.mark.parametrize(
    "fields",
    [
        [{"id": "65c39ebd07a04b9210cccbff", "value": "x"}],  # unknown field id
        [{"id": EMAIL, "value": "not-an-address"}],
        [{"id": BIRTHDAY, "value": "17.05.1980"}],
        [{"id": FIRST, "value": 42}],
        [{"id": FIRST, "value": "A"}, {"id": FIRST, "value": "B"}],
    ],
)
def test_customer_invalid_fields_are_400_and_create_nothing(api, fields):
    r = api.post(f"{TM}/v1/customers", json={"externalId": "p-1", "customfields": fields})
    assert_error(r, 400, "BadRequest")
    assert "not-an-address" not in r.text and "17.05.1980" not in r.text  # no personal data in errors
    assert state(api)["customers"] == {}


def test_customer_rejects_unknown_top_level_keys(api):
    assert_error(api.post(f"{TM}/v1/customers", json={"externalId": "p-1", "email": "a@b.de"}), 400)


def test_customer_patch_merges_and_removes(api):
    fields = [{"id": EMAIL, "value": "a@example.de"}, {"id": FIRST, "value": "Erika"}, {"id": LAST, "value": "Muster"}]
    customer = new_customer(api, fields=fields)
    changes = [
        {"id": FIRST, "value": None},
        {"id": LAST, "value": ""},
        {"id": EMAIL, "value": "b@example.de"},
        {"id": PHONE, "value": "+4917612345678"},
    ]
    r = api.patch(f"{TM}/v1/customers/p-1", params={"external": 1}, json={"customfields": changes})
    assert r.status_code == 200
    patched = r.json()["data"]
    assert patched["id"] == customer["id"]
    assert patched["customfields"] == [{"id": EMAIL, "value": "b@example.de"}, {"id": PHONE, "value": "+4917612345678"}]
    assert state(api)["customers"][customer["id"]]["customfields"] == patched["customfields"]
    assert_error(api.patch(f"{TM}/v1/customers/ghost", params={"external": 1}, json={"customfields": []}), 404)


def test_customer_delete_then_404(api):
    first, second = new_customer(api, "p-1"), new_customer(api, "p-2")
    r = api.delete(f"{TM}/v1/customers/{first['id']}")
    assert r.status_code == 200 and r.json() == {"data": {"id": first["id"]}, "status": 1}
    assert_error(api.get(f"{TM}/v1/customers/{first['id']}"), 404)
    assert_error(api.delete(f"{TM}/v1/customers/{first['id']}"), 404)
    assert api.delete(f"{TM}/v1/customers/p-2", params={"external": 1}).json()["data"]["id"] == second["id"]
    assert_error(api.get(f"{TM}/v1/customers/p-2", params={"external": 1}), 404)
    assert state(api)["customers"] == {}


def test_customer_pages_are_one_based(api):
    ids = [new_customer(api, f"p-{i}")["id"] for i in range(7)]
    pages = [api.get(f"{TM}/v1/customers", params={"page": p, "limit": 3}).json() for p in (1, 2, 3, 4)]
    assert [len(p["data"]) for p in pages] == [3, 3, 1, 0]
    assert [c["id"] for p in pages for c in p["data"]] == ids
    assert pages[0]["total"] == 7 and pages[0]["status"] == 1
    assert pages[1]["meta"] == {"page": 2, "limit": 3, "totalItems": 7, "totalPages": 3}
    default = api.get(f"{TM}/v1/customers").json()["meta"]
    assert default == {"page": 1, "limit": 50, "totalItems": 7, "totalPages": 1}
    assert api.get(f"{TM}/v1/customers", params={"limit": 500}).json()["meta"]["limit"] == 100  # capped
    assert_error(api.get(f"{TM}/v1/customers", params={"page": 0}), 400)
    assert_error(api.get(f"{TM}/v1/customers", params={"limit": "many"}), 400)


# -- appointments -----------------------------------------------------------


def test_appointment_has_recorded_shape_and_utc_times_across_dst(api):
    customer = new_customer(api)
    recorded = json.loads((RECORDED / "appointment.json").read_text())["data"]
    r = api.post(f"{TM}/v1/appointments", json=booking(customer["id"]))
    assert r.status_code == 201
    summer = r.json()["data"]
    assert list(summer) == list(recorded)
    assert HEX24.fullmatch(summer["id"]) and summer["externalId"] == "a-1"
    assert summer["startDate"] == "2026-03-29T08:00:00Z"  # 10:00 CEST (+2), the day clocks go forward
    assert summer["date"] == "2026-03-29Z" and summer["duration"] == 30 and summer["serviceId"] == BRANCH
    assert [(res["id"], res["externalId"]) for res in summer["resources"]] == [(HAMBURG, "sp-hamburg")]
    assert set(summer["resources"][0]) == set(recorded["resources"][0])
    assert set(summer["resources"][0]["category"]) == set(recorded["resources"][0]["category"])
    (b,) = summer["bookings"]
    assert set(b) == set(recorded["bookings"][0]) | {"externalId", "notes", "customers"}
    assert b["interval"] == {"begin": "2026-03-29T08:00:00Z", "end": "2026-03-29T08:30:00Z"}
    assert b["externalId"] == "a-1" and b["notes"] == "Termin" and b["resourceId"] == HAMBURG
    assert b["customers"] == [{"id": customer["id"], "externalId": "p-1"}]
    winter = api.post(f"{TM}/v1/appointments", json=booking(customer["id"], "a-2", "2026-03-28 10:00")).json()
    assert winter["data"]["startDate"] == "2026-03-28T09:00:00Z"  # 10:00 CET (+1), the day before
    assert api.get(f"{TM}/v1/appointments/a-2", params={"external": 1}).json() == winter
    assert state(api)["appointments"][summer["id"]] == summer


@pytest.mark.parametrize(
    "change",
    [
        {"startDate": "2026-03-28 10:03"},  # off the 5-minute grid
        {"startDate": "2026-03-28T10:00"},
        {"startDate": "2026-02-30 10:00"},
        {"startDate": "2026-03-29 02:30"},  # skipped when summer time starts
        {"service_id": "65e6d029d9d6e5c324d2aaff"},
        {"resource_ids": ["65e6d029d9d6e5c324d2bbff"]},
        {"resource_ids": "65e6d029d9d6e5c324d2bb01"},  # not a list
        {"customers": ["65e6d029d9d6e5c324d2ccff"]},
        {"duration": 7},
        {"duration": 0},
        {"duration": True},
        {"title": "extra key"},
    ],
)
def test_appointment_invalid_input_is_400_and_books_nothing(api, change):
    customer = new_customer(api)
    assert_error(api.post(f"{TM}/v1/appointments", json=booking(customer["id"], **change)), 400, "BadRequest")
    assert state(api)["appointments"] == {} and state(api)["creates"]["appointments"] == {}


def test_appointment_duplicate_external_id_is_409(api):
    customer = new_customer(api)
    first = api.post(f"{TM}/v1/appointments", json=booking(customer["id"])).json()["data"]
    again = api.post(f"{TM}/v1/appointments", json=booking(customer["id"], start="2026-04-01 09:00"))
    assert_error(again, 409, "DuplicateExternalId")
    assert list(state(api)["appointments"]) == [first["id"]]
    assert state(api)["creates"]["appointments"] == {"a-1": 1}


def test_appointment_patch_reschedules_with_same_validation(api):
    customer = new_customer(api)
    created = api.post(f"{TM}/v1/appointments", json=booking(customer["id"])).json()["data"]
    url = f"{TM}/v1/appointments/{created['id']}"
    r = api.patch(url, json={"startDate": "2026-10-26 09:15", "resource_ids": [BERLIN], "service_id": VIDEO})
    assert r.status_code == 200
    moved = r.json()["data"]
    assert moved["id"] == created["id"] and moved["startDate"] == "2026-10-26T08:15:00Z"  # back on CET
    assert moved["duration"] == 30 and moved["notes"] == "Termin"  # kept
    assert moved["serviceId"] == VIDEO and moved["resources"][0]["externalId"] == "sp-berlin"
    assert moved["bookings"][0]["interval"]["end"] == "2026-10-26T08:45:00Z"
    assert_error(api.patch(url, json={"startDate": "2026-10-26 09:17"}), 400)
    assert_error(api.patch(url, json={"duration": -5}), 400)
    assert api.get(url).json()["data"] == moved  # a refused patch changes nothing
    longer = api.patch(f"{TM}/v1/appointments/a-1", params={"external": 1}, json={"duration": 60}).json()["data"]
    assert longer["bookings"][0]["interval"]["end"] == "2026-10-26T09:15:00Z"
    assert_error(api.patch(f"{TM}/v1/appointments/ghost", json={"duration": 60}), 404)
    # A booked customer that was deleted since does not block a reschedule; a new unknown one does.
    api.delete(f"{TM}/v1/customers/{customer['id']}")
    assert api.patch(url, json={"startDate": "2026-10-27 09:00"}).status_code == 200
    assert api.get(url).json()["data"]["customers"] == [{"id": customer["id"], "externalId": "p-1"}]
    assert_error(api.patch(url, json={"customers": ["65e6d029d9d6e5c324d2ccff"]}), 400)


def test_appointment_list_by_date_span_or_ids(api):
    customer = new_customer(api)
    for ext, start in (("a-1", "2026-03-29 10:00"), ("a-2", "2026-03-28 10:00"), ("a-3", "2027-01-10 00:00")):
        api.post(f"{TM}/v1/appointments", json=booking(customer["id"], ext, start))
    url = f"{TM}/v1/appointments"
    march = api.get(url, params={"from_date": "2026-03-28", "to_date": "2026-03-29"}).json()
    assert [a["externalId"] for a in march["data"]] == ["a-2", "a-1"] and march["meta"]["totalItems"] == 2
    # 00:00 in Berlin is 23:00Z the day before: the company's local day counts.
    assert api.get(url, params={"from_date": "2027-01-10", "to_date": "2027-01-10"}).json()["total"] == 1
    year = api.get(url, params={"from_date": "2026-03-28", "to_date": "2027-03-28", "limit": 2}).json()
    assert year["meta"] == {"page": 1, "limit": 2, "totalItems": 3, "totalPages": 2}
    assert_error(api.get(url, params={"from_date": "2026-03-28", "to_date": "2027-03-29"}), 400)  # 366 days
    assert_error(api.get(url, params={"from_date": "2026-03-29", "to_date": "2026-03-28"}), 400)
    assert_error(api.get(url, params={"from_date": "2026-03-28"}), 400)
    ids = [a["id"] for a in march["data"]]
    by_ids = api.get(url, params={"ids": f"{ids[1]},unknown,{ids[0]}"}).json()
    assert [a["id"] for a in by_ids["data"]] == [ids[1], ids[0]]


def test_bulk_delete_then_404(api):
    customer = new_customer(api)
    ids = [
        api.post(f"{TM}/v1/appointments", json=booking(customer["id"], f"a-{i}")).json()["data"]["id"] for i in range(3)
    ]
    body = {"ids": [ids[0], ids[2], "unknown"], "has_notify_customers": False}
    r = api.post(f"{TM}/v1/appointments/delete/bulk", json=body)
    assert r.status_code == 200 and r.json() == {"data": {"ids": [ids[0], ids[2]]}, "status": 1}
    assert_error(api.get(f"{TM}/v1/appointments/{ids[0]}"), 404)
    assert_error(api.get(f"{TM}/v1/appointments/a-2", params={"external": 1}), 404)
    assert list(state(api)["appointments"]) == [ids[1]]
    assert api.post(f"{TM}/v1/appointments/delete/bulk", json={"ids": [ids[0]]}).json()["data"]["ids"] == []
    assert_error(api.post(f"{TM}/v1/appointments/delete/bulk", json={"ids": "all"}), 400)
    # A deleted externalId may be booked again; the counter shows the second create.
    assert api.post(f"{TM}/v1/appointments", json=booking(customer["id"], "a-0")).status_code == 201
    assert state(api)["creates"]["appointments"] == {"a-0": 2, "a-1": 1, "a-2": 1}


# -- state, reset, errors, faults --------------------------------------------


def test_state_exposes_fixed_records_and_reset_keeps_them(api):
    customer = new_customer(api)
    api.post(f"{TM}/v1/appointments", json=booking(customer["id"]))
    s = state(api)
    assert s["company_id"] == COMPANY and set(s["services"]) == {BRANCH, VIDEO}
    assert {r["externalId"]: rid for rid, r in s["resources"].items()} == {
        "sp-hamburg": HAMBURG,
        "sp-berlin": BERLIN,
        "sp-muenchen": "65e6d029d9d6e5c324d2bb03",
    }
    assert s["calls"]["POST /v1/appointments"] == 1 and s["calls"]["POST /v1/customers"] == 1
    api.post("/_sandbox/reset")
    s = state(api)
    assert (s["customers"], s["appointments"], s["calls"], s["tokens"]) == ({}, {}, {}, 0)
    assert s["creates"] == {"customers": {}, "appointments": {}} and set(s["services"]) == {BRANCH, VIDEO}
    assert_error(api.get(f"{TM}/v1/customers"), 401)  # tokens revoked


def test_unknown_route_and_method_use_timify_error_shape(api):
    assert_error(api.get(f"{TM}/v1/nothing-here"), 404)
    assert_error(api.put(f"{TM}/v1/customers"), 405)


def test_error_faults_hit_processor_routes_only(client):
    client.post("/_sandbox/reset", json={"fault_rate": 1.0, "kinds": ["500"]})
    r = client.post(f"{TM}/v1/auth/token", json=APP)
    assert r.status_code == 500 and r.headers["x-sandbox-fault"] == "500"
    r = client.post(
        "/flexperto/api/v2/oauth/token",
        auth=("psync-sandbox", "sandbox-secret"),
        data={"grant_type": "client_credentials"},
    )
    assert r.status_code == 500 and r.headers["x-sandbox-fault"] == "500"
    s = client.get("/_sandbox/state")
    assert s.status_code == 200 and s.json()["faults"]["500"] == 2
    assert s.json()["timify"]["tokens"] == 0 and s.json()["flexperto"]["tokens"] == 0  # handlers never ran


def test_token_expiry_fault_revokes_raw_timify_token(api):
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["token_expiry"]})
    r = api.get(f"{TM}/v1/customers")
    assert r.headers["x-sandbox-fault"] == "token_expiry"
    assert_error(r, 401)
    api.post("/_sandbox/faults", json={"fault_rate": 0.0})
    assert_error(api.get(f"{TM}/v1/customers"), 401)  # stays revoked
