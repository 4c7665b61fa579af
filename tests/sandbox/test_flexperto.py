"""Tests for the sandbox's Flexperto imitation (all shapes assumed), over HTTP only."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from sandbox.app import create_app

FX = "/flexperto/api/v2"
CREDS = ("psync-sandbox", "sandbox-secret")
GRANT = {"grant_type": "client_credentials"}
ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def get_token(client) -> str:
    r = client.post(f"{FX}/oauth/token", auth=CREDS, data=GRANT)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


@pytest.fixture
def client():
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def api(client):
    client.headers["Authorization"] = f"Bearer {get_token(client)}"
    return client


def state(client) -> dict:
    return client.get("/_sandbox/state").json()["flexperto"]


def new_customer(api, external_id="p-1", **contact) -> dict:
    r = api.post(f"{FX}/customers", json={"external_id": external_id, **contact})
    assert r.status_code == 201, r.text
    return r.json()


def hold_chat(api, customer_id, at="2026-01-05T10:00:00Z") -> list[dict]:
    r = api.post("/_sandbox/flexperto/chats", json={"customer_id": customer_id, "at": at})
    assert r.status_code == 201, r.text
    return r.json()["items"]


def assert_error(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json() == {"error": {"code": code, "message": r.json()["error"]["message"]}}


# -- auth -------------------------------------------------------------------


def test_token_is_oauth_client_credentials(client):
    r = client.post(f"{FX}/oauth/token", auth=CREDS, data=GRANT)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert client.get(f"{FX}/customers", headers={"Authorization": f"Bearer {body['access_token']}"}).status_code == 200
    wrong = client.post(f"{FX}/oauth/token", auth=("psync-sandbox", "wrong"), data=GRANT)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert client.post(f"{FX}/oauth/token", data=GRANT).status_code == 401  # no Basic credentials
    grant = client.post(f"{FX}/oauth/token", auth=CREDS, data={"grant_type": "password"})
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    assert state(client)["tokens"] == 1


def test_routes_need_a_valid_bearer_token(client):
    token = get_token(client)
    assert_error(client.get(f"{FX}/customers"), 401, "unauthorized")
    assert_error(client.get(f"{FX}/customers", headers={"Authorization": token}), 401, "unauthorized")  # raw
    assert_error(client.get(f"{FX}/archives", headers={"Authorization": "Bearer bogus"}), 401, "unauthorized")
    assert client.post("/_sandbox/flexperto/expire-tokens").json() == {"revoked": 1}
    assert_error(client.get(f"{FX}/customers", headers={"Authorization": f"Bearer {token}"}), 401, "unauthorized")
    with TestClient(create_app(token_ttl_s=0)) as c:
        r = c.post(f"{FX}/oauth/token", auth=CREDS, data=GRANT)
        assert r.json()["expires_in"] == 0
        expired = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert c.get(f"{FX}/customers", headers=expired).status_code == 401


# -- customers --------------------------------------------------------------


def test_customer_create_lookup_and_conflict(api):
    contact = {"external_id": "p-1", "email": "erika@example.de", "phone": "+4917612345678"}
    r = api.post(f"{FX}/customers", json=contact)
    assert r.status_code == 201
    customer = r.json()
    assert list(customer) == ["id", "external_id", "email", "phone", "created_at"]
    assert re.fullmatch(r"cus_[0-9a-f]+", customer["id"]) and ISO_Z.fullmatch(customer["created_at"])
    assert {k: customer[k] for k in contact} == contact
    assert api.get(f"{FX}/customers", params={"external_id": "p-1"}).json() == {"items": [customer]}
    assert api.get(f"{FX}/customers", params={"external_id": "p-2"}).json() == {"items": []}
    assert api.get(f"{FX}/customers/{customer['id']}").json() == customer
    assert_error(api.get(f"{FX}/customers/cus_0000"), 404, "not_found")
    conflict = api.post(f"{FX}/customers", json={"external_id": "p-1", "email": "other@example.de"})
    assert_error(conflict, 409, "conflict")
    assert "example.de" not in conflict.text
    assert state(api)["creates"] == {"p-1": 1} and list(state(api)["customers"]) == [customer["id"]]


@pytest.mark.parametrize(
    "body",
    [
        {"external_id": "p-1", "email": "a@example.de", "first_name": "Erika"},  # contact data only
        {"external_id": "p-1", "insurance_number": "A123456780"},
        {"email": "a@example.de"},  # external_id missing
        {"external_id": "p-1", "email": "not-an-address"},
        {"external_id": "p-1", "phone": 4917612345678},
        ["p-1"],
    ],
)
def test_customer_create_refuses_anything_but_contact_data(api, body):
    r = api.post(f"{FX}/customers", json=body)
    assert_error(r, 400, "invalid_request")
    assert "Erika" not in r.text and "not-an-address" not in r.text
    assert state(api)["customers"] == {} and state(api)["creates"] == {}


def test_customer_delete_then_404_and_external_id_free_again(api):
    customer = new_customer(api, email="a@example.de")
    r = api.delete(f"{FX}/customers/{customer['id']}")
    assert r.status_code == 204 and r.content == b""
    assert_error(api.get(f"{FX}/customers/{customer['id']}"), 404, "not_found")
    assert_error(api.delete(f"{FX}/customers/{customer['id']}"), 404, "not_found")
    assert api.get(f"{FX}/customers", params={"external_id": "p-1"}).json() == {"items": []}
    again = new_customer(api)
    assert again["id"] != customer["id"] and again["email"] is None
    assert state(api)["creates"] == {"p-1": 2}


# -- archives ---------------------------------------------------------------


def test_held_chat_creates_chat_and_recording_archives(api):
    customer, other = new_customer(api, "p-1"), new_customer(api, "p-2")
    made = hold_chat(api, customer["id"], at="2026-01-05T11:00:00+01:00")
    assert [a["kind"] for a in made] == ["chat", "recording"]
    for archive in made:
        assert list(archive) == ["id", "customer_id", "kind", "created_at"]
        assert re.fullmatch(r"arc_[0-9a-f]+", archive["id"])
        assert archive["customer_id"] == customer["id"] and archive["created_at"] == "2026-01-05T10:00:00Z"
    hold_chat(api, other["id"])
    assert api.get(f"{FX}/archives", params={"customer_id": customer["id"]}).json() == {"items": made}
    assert api.get(f"{FX}/archives/{made[0]['id']}").json() == made[0]
    assert len(state(api)["archives"]) == 4
    assert_error(api.post("/_sandbox/flexperto/chats", json={"customer_id": "cus_0000"}), 404, "not_found")
    bad_time = api.post("/_sandbox/flexperto/chats", json={"customer_id": customer["id"], "at": "gestern"})
    assert_error(bad_time, 400, "invalid_request")


def test_archive_delete_then_404(api):
    customer = new_customer(api)
    chat, recording = hold_chat(api, customer["id"])
    r = api.delete(f"{FX}/archives/{chat['id']}")
    assert r.status_code == 204 and r.content == b""
    assert_error(api.get(f"{FX}/archives/{chat['id']}"), 404, "not_found")
    assert_error(api.delete(f"{FX}/archives/{chat['id']}"), 404, "not_found")
    assert api.get(f"{FX}/archives", params={"customer_id": customer["id"]}).json() == {"items": [recording]}


def test_customer_delete_leaves_its_archives(api):
    customer = new_customer(api)
    made = hold_chat(api, customer["id"])
    assert api.delete(f"{FX}/customers/{customer['id']}").status_code == 204
    # The client must delete them itself: they are still listed and readable.
    assert api.get(f"{FX}/archives", params={"customer_id": customer["id"]}).json() == {"items": made}
    assert set(state(api)["archives"]) == {a["id"] for a in made}


# -- state, reset, errors, faults --------------------------------------------


def test_state_counts_calls_and_reset_empties_it(api):
    customer = new_customer(api)
    hold_chat(api, customer["id"])
    api.get(f"{FX}/archives", params={"customer_id": customer["id"]})
    s = state(api)
    assert s["calls"] == {"POST /api/v2/oauth/token": 1, "POST /api/v2/customers": 1, "GET /api/v2/archives": 1}
    assert api.post("/_sandbox/reset").status_code == 200
    assert state(api) == {"customers": {}, "archives": {}, "creates": {}, "calls": {}, "tokens": 0}
    assert_error(api.get(f"{FX}/customers"), 401, "unauthorized")  # tokens revoked


def test_unknown_route_and_method_use_flexperto_error_shape(api):
    assert_error(api.get(f"{FX}/nothing-here"), 404, "not_found")
    assert_error(api.put(f"{FX}/customers"), 405, "method_not_allowed")


def test_token_expiry_fault_revokes_callers_token(api):
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["token_expiry"]})
    r = api.get(f"{FX}/customers")
    assert r.headers["x-sandbox-fault"] == "token_expiry"
    assert_error(r, 401, "unauthorized")
    api.post("/_sandbox/faults", json={"fault_rate": 0.0})
    assert_error(api.get(f"{FX}/customers"), 401, "unauthorized")
