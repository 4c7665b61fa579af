"""Tests for the sandbox's ISIC card-issuer imitation (all shapes assumed), over HTTP only."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime

import pytest
import requests
from fastapi.testclient import TestClient

from sandbox import isic_state
from sandbox.app import create_app

IS = "/isic"
CREDS = {"clientId": "psync-sandbox", "clientSecret": "sandbox-secret"}
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64
GIF = b"GIF89a" + b"\x00" * 64
TWO_MB = 2 * 1024 * 1024
ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
CARDHOLDER = {
    "cardholderId": "p-1",
    "firstName": "Erika",
    "lastName": "Mustermann",
    "dateOfBirth": "2004-05-01",
    "email": "erika@example.de",
    "institutionName": "TU Dresden",
    "studentStatus": "student",
}


def get_token(client) -> str:
    r = client.post(f"{IS}/auth/token", json=CREDS)
    assert r.status_code == 200, r.text
    return r.json()["accessToken"]


@pytest.fixture
def client():
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def api(client):
    client.headers["Authorization"] = f"Bearer {get_token(client)}"
    return client


def state(client) -> dict:
    return client.get("/_sandbox/state").json()["isic"]


def call(api, name: str, **body):
    return api.post(f"{IS}/{name}", json=body)


def new_cardholder(api, cardholder_id="p-1", **changes) -> dict:
    r = call(api, "cardholders.set", **{**CARDHOLDER, "cardholderId": cardholder_id, **changes})
    assert r.status_code == 200, r.text
    return r.json()


def upload(api, cardholder_id="p-1", data=JPEG, content_type="image/jpeg", filename="photo.jpg"):
    return api.post(
        f"{IS}/cardholders.setPhoto",
        data={"cardholderId": cardholder_id},
        files={"photo": (filename, data, content_type)},
    )


def request_card(api, cardholder_id="p-1") -> dict:
    r = call(api, "cards.request", cardholderId=cardholder_id, cardType="ISIC")
    assert r.status_code == 200, r.text
    return r.json()


def cards_of(api, cardholder_id="p-1") -> list[dict]:
    r = call(api, "cards.list", cardholderId=cardholder_id)
    assert r.status_code == 200, r.text
    return r.json()["cards"]


def assert_error(r, status: int) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == status and body["error"]["message"]


# -- auth -------------------------------------------------------------------


def test_token_is_short_lived_and_needs_client_credentials(client):
    r = client.post(f"{IS}/auth/token", json=CREDS)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"accessToken", "tokenType", "expiresIn"}
    # The sandbox-wide TTL is an hour; the issuer caps its own tokens at five minutes.
    assert body["tokenType"] == "Bearer" and body["expiresIn"] == 300
    headers = {"Authorization": f"Bearer {body['accessToken']}"}
    assert client.post(f"{IS}/cards.list", json={"cardholderId": "p-1"}, headers=headers).status_code == 200
    assert_error(client.post(f"{IS}/auth/token", json={**CREDS, "clientSecret": "wrong"}), 401)
    assert_error(client.post(f"{IS}/auth/token", json={}), 401)
    assert_error(client.post(f"{IS}/auth/token", content=b"{not json"), 400)
    assert state(client)["tokens"] == 1
    with TestClient(create_app(token_ttl_s=60)) as c:
        assert c.post(f"{IS}/auth/token", json=CREDS).json()["expiresIn"] == 60


def test_routes_need_a_valid_bearer_token(client):
    token = get_token(client)
    body = {"cardholderId": "p-1"}
    assert_error(client.post(f"{IS}/cards.list", json=body), 401)
    assert_error(client.post(f"{IS}/cards.list", json=body, headers={"Authorization": token}), 401)  # raw
    assert_error(client.post(f"{IS}/cardholders.get", json=body, headers={"Authorization": "Bearer bogus"}), 401)
    assert client.post("/_sandbox/isic/expire-tokens").json() == {"revoked": 1}
    assert_error(client.post(f"{IS}/cards.list", json=body, headers={"Authorization": f"Bearer {token}"}), 401)
    assert state(client)["calls"] == {"POST /auth/token": 1}  # refused requests are not counted
    with TestClient(create_app(token_ttl_s=0)) as c:
        r = c.post(f"{IS}/auth/token", json=CREDS)
        assert r.json()["expiresIn"] == 0
        expired = {"Authorization": f"Bearer {r.json()['accessToken']}"}
        assert_error(c.post(f"{IS}/cards.list", json=body, headers=expired), 401)


# -- cardholders --------------------------------------------------------------


def test_cardholder_set_creates_then_updates_by_id(api):
    created = new_cardholder(api)
    assert list(created) == [*CARDHOLDER, "hasPhoto", "deletionPending", "createdAt", "updatedAt"]
    assert {k: created[k] for k in CARDHOLDER} == CARDHOLDER
    assert created["hasPhoto"] is False and created["deletionPending"] is False
    assert ISO_Z.fullmatch(created["createdAt"]) and created["updatedAt"] == created["createdAt"]
    assert new_cardholder(api) == created  # the same data again changes nothing
    updated = new_cardholder(api, institutionName="HTW Dresden", studentStatus="pupil")
    assert updated["institutionName"] == "HTW Dresden" and updated["studentStatus"] == "pupil"
    assert updated["createdAt"] == created["createdAt"]
    assert call(api, "cardholders.get", cardholderId="p-1").json() == updated
    assert_error(call(api, "cardholders.get", cardholderId="p-2"), 404)
    s = state(api)
    assert s["creates"]["cardholders"] == {"p-1": 1} and list(s["cardholders"]) == ["p-1"]


@pytest.mark.parametrize(
    "changes",
    [
        {"iban": "DE02120300000000202051"},  # RDS gets it elsewhere; the issuer's API must not
        {"postalCode": "01069"},
        {"phonePassword": "Sommer2024"},
        {"email": None},  # required
        {"dateOfBirth": "2004-02-30"},
        {"dateOfBirth": "01.05.2004"},
        {"dateOfBirth": "2999-01-01"},
        {"studentStatus": "teacher"},
        {"email": "not-an-address"},
    ],
)
def test_cardholder_set_refuses_other_keys_and_bad_values(api, changes):
    body = {k: v for k, v in {**CARDHOLDER, **changes}.items() if v is not None}
    r = call(api, "cardholders.set", **body)
    assert_error(r, 400)
    for value in changes.values():  # messages never quote the data
        assert value is None or str(value) not in r.text
    assert state(api)["cardholders"] == {} and state(api)["creates"]["cardholders"] == {}


def test_cardholder_set_refuses_a_non_object(api):
    assert_error(api.post(f"{IS}/cardholders.set", json=[CARDHOLDER]), 400)
    assert_error(api.post(f"{IS}/cardholders.set", content=b"{broken"), 400)
    assert state(api)["cardholders"] == {}


# -- photos -------------------------------------------------------------------


def test_photo_upload_accepts_jpeg_and_png_and_keeps_only_size_and_hash(api):
    new_cardholder(api)
    r = upload(api)
    assert r.status_code == 200 and r.json() == {"cardholderId": "p-1", "hasPhoto": True}
    assert call(api, "cardholders.get", cardholderId="p-1").json()["hasPhoto"] is True
    photo = {"size": len(JPEG), "sha256": hashlib.sha256(JPEG).hexdigest(), "contentType": "image/jpeg"}
    assert state(api)["cardholders"]["p-1"]["photo"] == photo
    assert upload(api, data=PNG, content_type="image/png", filename="photo.png").status_code == 200
    photo = {"size": len(PNG), "sha256": hashlib.sha256(PNG).hexdigest(), "contentType": "image/png"}
    assert state(api)["cardholders"]["p-1"]["photo"] == photo  # replaced


def test_photo_upload_as_encoded_by_requests(api):
    # The connector uses requests: its multipart encoding must parse byte-exactly.
    new_cardholder(api)
    files = {"photo": ("photo.jpg", JPEG, "image/jpeg")}
    prepared = requests.Request("POST", "http://sandbox.invalid/", data={"cardholderId": "p-1"}, files=files).prepare()
    headers = {"Content-Type": prepared.headers["Content-Type"]}
    r = api.post(f"{IS}/cardholders.setPhoto", content=prepared.body, headers=headers)
    assert r.status_code == 200, r.text
    assert state(api)["cardholders"]["p-1"]["photo"]["sha256"] == hashlib.sha256(JPEG).hexdigest()


def test_photo_upload_refusals(api):
    new_cardholder(api)
    assert_error(upload(api, data=GIF, content_type="image/gif", filename="photo.gif"), 415)
    assert_error(upload(api, data=PNG, content_type="image/jpeg"), 415)  # label contradicts the bytes
    big = JPEG + b"\x00" * (TWO_MB + 1 - len(JPEG))
    assert_error(upload(api, data=big), 413)
    assert_error(upload(api, cardholder_id="p-2"), 404)
    assert_error(call(api, "cardholders.setPhoto", cardholderId="p-1"), 415)  # JSON, not multipart
    no_photo = api.post(f"{IS}/cardholders.setPhoto", data={"cardholderId": "p-1"}, files={"other": ("x", JPEG)})
    assert_error(no_photo, 400)
    assert state(api)["cardholders"]["p-1"]["photo"] is None
    at_limit = JPEG + b"\x00" * (TWO_MB - len(JPEG))
    assert upload(api, data=at_limit).status_code == 200
    assert state(api)["cardholders"]["p-1"]["photo"]["size"] == TWO_MB


# -- cards --------------------------------------------------------------------


def test_card_has_a_photo_only_when_the_photo_came_first(api, monkeypatch):
    monkeypatch.setattr(isic_state, "now", lambda: datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
    new_cardholder(api)
    early = request_card(api)
    keys = ["cardNumber", "cardholderId", "cardType", "status", "hasPhoto", "validFrom", "validTo", "createdAt"]
    assert list(early) == keys
    assert re.fullmatch(r"S\d{12}", early["cardNumber"])
    assert (early["cardholderId"], early["cardType"], early["status"]) == ("p-1", "ISIC", "PENDING")
    assert early["hasPhoto"] is False
    assert (early["validFrom"], early["validTo"]) == ("2026-03-02", "2027-03-02")  # one year
    assert early["createdAt"] == "2026-03-02T09:30:00Z"
    assert upload(api).status_code == 200
    assert cards_of(api) == [early]  # the photo did not reach the card made before it
    late = request_card(api)  # not idempotent: a second request makes a second card
    assert late["hasPhoto"] is True and late["cardNumber"] != early["cardNumber"]
    assert cards_of(api) == [early, late]
    assert state(api)["creates"]["cards"] == {"p-1": 2}


def test_card_requested_on_29_february_is_valid_until_28_february(api, monkeypatch):
    monkeypatch.setattr(isic_state, "now", lambda: datetime(2028, 2, 29, 12, 0, tzinfo=UTC))
    new_cardholder(api)
    card = request_card(api)
    assert (card["validFrom"], card["validTo"]) == ("2028-02-29", "2029-02-28")


def test_card_request_refusals_make_no_card(api):
    new_cardholder(api)
    assert_error(call(api, "cards.request", cardholderId="p-2", cardType="ISIC"), 404)
    assert_error(call(api, "cards.request", cardholderId="p-1", cardType="ITIC"), 400)
    assert_error(call(api, "cards.request", cardholderId="p-1"), 400)
    assert state(api)["cards"] == {} and state(api)["creates"]["cards"] == {}


def test_cards_list_is_per_cardholder(api):
    new_cardholder(api, "p-1")
    new_cardholder(api, "p-2")
    mine = request_card(api, "p-1")
    request_card(api, "p-2")
    assert cards_of(api, "p-1") == [mine]
    assert cards_of(api, "p-9") == []  # unknown: empty, not 404


def test_change_status_only_voids(api):
    new_cardholder(api)
    pending, issued = request_card(api), request_card(api)
    assert api.post("/_sandbox/isic/issue", json={"cardNumber": issued["cardNumber"]}).status_code == 200
    for card in (pending, issued):
        r = call(api, "cards.changeStatus", cardNumber=card["cardNumber"], status="VOIDED")
        assert r.status_code == 200 and r.json() == {**card, "status": "VOIDED"}
    again = call(api, "cards.changeStatus", cardNumber=pending["cardNumber"], status="VOIDED")
    assert again.status_code == 200 and again.json()["status"] == "VOIDED"  # no-op
    assert_error(call(api, "cards.changeStatus", cardNumber=pending["cardNumber"], status="ACTIVE"), 400)
    assert_error(call(api, "cards.changeStatus", cardNumber="S000000000000", status="VOIDED"), 404)
    assert [c["status"] for c in cards_of(api)] == ["VOIDED", "VOIDED"]


def test_issue_control_activates_one_or_every_pending_card(api):
    new_cardholder(api)
    first, second, third = request_card(api), request_card(api), request_card(api)
    r = api.post("/_sandbox/isic/issue", json={"cardNumber": first["cardNumber"]})
    assert r.json() == {"issued": [first["cardNumber"]]}
    call(api, "cards.changeStatus", cardNumber=third["cardNumber"], status="VOIDED")
    assert api.post("/_sandbox/isic/issue").json() == {"issued": [second["cardNumber"]]}
    assert [c["status"] for c in cards_of(api)] == ["ACTIVE", "ACTIVE", "VOIDED"]
    assert_error(api.post("/_sandbox/isic/issue", json={"cardNumber": third["cardNumber"]}), 409)
    assert_error(api.post("/_sandbox/isic/issue", json={"cardNumber": "S000000000000"}), 404)


# -- erasure ------------------------------------------------------------------


def test_delete_is_asynchronous_and_completes_on_the_second_get(api):
    new_cardholder(api)
    upload(api)
    request_card(api)
    r = call(api, "cardholders.delete", cardholderId="p-1")
    assert r.status_code == 202 and r.json() == {"cardholderId": "p-1", "status": "pending"}
    assert call(api, "cardholders.delete", cardholderId="p-1").status_code == 202  # still pending
    # Nothing new may reach a cardholder under erasure.
    assert_error(call(api, "cardholders.set", **CARDHOLDER), 409)
    assert_error(upload(api), 409)
    assert_error(call(api, "cards.request", cardholderId="p-1", cardType="ISIC"), 409)
    first = call(api, "cardholders.get", cardholderId="p-1")
    assert first.status_code == 200 and first.json()["deletionPending"] is True
    assert len(cards_of(api)) == 1  # not yet gone
    assert state(api)["deletions"] == {"pending": ["p-1"], "completed": []}
    assert_error(call(api, "cardholders.get", cardholderId="p-1"), 404)
    assert cards_of(api) == []
    assert_error(call(api, "cardholders.get", cardholderId="p-1"), 404)
    assert_error(call(api, "cardholders.delete", cardholderId="p-1"), 404)
    s = state(api)
    assert s["cardholders"] == {} and s["cards"] == {}
    assert s["deletions"] == {"pending": [], "completed": ["p-1"]}
    assert new_cardholder(api)["hasPhoto"] is False  # the id is free again, the photo is gone
    assert state(api)["creates"]["cardholders"] == {"p-1": 2}


def test_complete_deletions_control_finishes_pending_deletions_at_once(api):
    for cid in ("p-1", "p-2", "p-3"):
        new_cardholder(api, cid)
        request_card(api, cid)
    call(api, "cardholders.delete", cardholderId="p-1")
    call(api, "cardholders.delete", cardholderId="p-2")
    assert_error(call(api, "cardholders.delete", cardholderId="p-9"), 404)
    assert api.post("/_sandbox/isic/complete-deletions").json() == {"completed": ["p-1", "p-2"]}
    assert_error(call(api, "cardholders.get", cardholderId="p-1"), 404)  # no pending answer left
    assert cards_of(api, "p-2") == []
    assert call(api, "cardholders.get", cardholderId="p-3").json()["deletionPending"] is False
    assert [c["cardholderId"] for c in state(api)["cards"].values()] == ["p-3"]
    assert api.post("/_sandbox/isic/complete-deletions").json() == {"completed": []}


# -- state, order, errors, faults ---------------------------------------------


def test_order_log_and_call_counts(api):
    new_cardholder(api)
    upload(api)
    card = request_card(api)
    call(api, "cards.changeStatus", cardNumber=card["cardNumber"], status="VOIDED")
    call(api, "cards.list", cardholderId="p-2")
    s = state(api)
    assert s["order"] == [
        ["POST /cardholders.set", "p-1"],
        ["POST /cardholders.setPhoto", "p-1"],
        ["POST /cards.request", "p-1"],
        ["POST /cards.changeStatus", "p-1"],  # the card's owner
        ["POST /cards.list", "p-2"],
    ]
    assert s["calls"] == {
        "POST /auth/token": 1,
        "POST /cardholders.set": 1,
        "POST /cardholders.setPhoto": 1,
        "POST /cards.request": 1,
        "POST /cards.changeStatus": 1,
        "POST /cards.list": 1,
    }


def test_reset_empties_state_and_revokes_tokens(api):
    new_cardholder(api)
    request_card(api)
    call(api, "cardholders.delete", cardholderId="p-1")
    assert api.post("/_sandbox/reset").status_code == 200
    assert state(api) == {
        "cardholders": {},
        "cards": {},
        "creates": {"cardholders": {}, "cards": {}},
        "calls": {},
        "order": [],
        "deletions": {"pending": [], "completed": []},
        "tokens": 0,
    }
    assert_error(call(api, "cards.list", cardholderId="p-1"), 401)


def test_unknown_call_and_wrong_method(api):
    assert_error(call(api, "cards.changeValidity", cardNumber="S000000000000"), 404)
    assert_error(api.get(f"{IS}/cards.list"), 405)


def test_error_faults_hit_isic_routes_before_any_change(api):
    new_cardholder(api)
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["503"]})
    r = call(api, "cards.request", cardholderId="p-1", cardType="ISIC")
    assert r.headers["x-sandbox-fault"] == "503"
    assert_error(r, 503)
    api.post("/_sandbox/faults", json={"fault_rate": 0.0})
    assert state(api)["cards"] == {} and state(api)["creates"]["cards"] == {}
    assert api.get("/_sandbox/state").json()["faults"]["503"] == 1


def test_dropped_answer_to_a_card_request_still_made_the_card(api):
    # Why a client must list cards before it repeats cards.request: the lost answer made one.
    new_cardholder(api)
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["drop"]})
    r = call(api, "cards.request", cardholderId="p-1", cardType="ISIC")
    assert r.headers["x-sandbox-fault"] == "drop"
    with pytest.raises(ValueError):
        json.loads(r.content)  # the body was cut off
    api.post("/_sandbox/faults", json={"fault_rate": 0.0})
    assert len(cards_of(api)) == 1
    assert state(api)["creates"]["cards"] == {"p-1": 1}


def test_token_expiry_fault_revokes_callers_token(api):
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["token_expiry"]})
    r = call(api, "cards.list", cardholderId="p-1")
    assert r.headers["x-sandbox-fault"] == "token_expiry"
    assert_error(r, 401)
    api.post("/_sandbox/faults", json={"fault_rate": 0.0})
    assert_error(call(api, "cards.list", cardholderId="p-1"), 401)
    api.headers["Authorization"] = f"Bearer {get_token(api)}"  # a new token works again
    assert call(api, "cards.list", cardholderId="p-1").status_code == 200
