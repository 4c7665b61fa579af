"""ISIC connector against `responses` (only call names and order are public: see its docstring)."""

from __future__ import annotations

import json
from datetime import date, datetime

import pytest
import requests
import responses
from responses import matchers

from connectors.isic import ALLOWED_FIELDS, Isic, check_allowed, from_settings
from connectors.transport import FatalError, RetriableError, RetryPolicy
from core.settings import get_settings

ROOT = "https://isic.test/isic"
TOKEN = f"{ROOT}/auth/token"
SET = f"{ROOT}/cardholders.set"
PHOTO = f"{ROOT}/cardholders.setPhoto"
GET = f"{ROOT}/cardholders.get"
DELETE = f"{ROOT}/cardholders.delete"
REQUEST = f"{ROOT}/cards.request"
LIST = f"{ROOT}/cards.list"
STATUS = f"{ROOT}/cards.changeStatus"

PERSON = dict(
    first_name="Erika",
    last_name="Mustermann",
    date_of_birth=date(2004, 5, 1),
    email="erika@example.de",
    institution="TU Dresden",
    student_status="student",
)


def sent(call) -> dict:
    return json.loads(call.request.body)


def calls_to(url: str) -> list:
    return [c for c in responses.calls if c.request.url == url]


def card(number: str = "S420000000001A", status: str = "PENDING", holder: str = "p-1") -> dict:
    return {
        "cardNumber": number,
        "cardholderId": holder,
        "cardType": "ISIC",
        "status": status,
        "hasPhoto": True,
        "validFrom": "2025-09-01",
        "validTo": "2026-12-31",
    }


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def isic():
    responses.post(TOKEN, json={"accessToken": "I1", "tokenType": "Bearer", "expiresIn": 300})
    return Isic.connect(ROOT + "/", "cid", "csecret", policy=RetryPolicy(3))


# auth ----------------------------------------------------------------------------------
@responses.activate
def test_token_from_client_credentials_then_bearer(isic):
    responses.post(GET, json={"cardholderId": "p-1"})
    assert isic.get_cardholder("p-1") == {"cardholderId": "p-1"}
    token_call, call = responses.calls
    assert sent(token_call) == {"clientId": "cid", "clientSecret": "csecret"}
    assert call.request.headers["Authorization"] == "Bearer I1"
    assert sent(call) == {"cardholderId": "p-1"}
    assert [c.operation for c in isic.http.drain_calls()] == ["auth.token", "cardholders.get"]


@responses.activate
def test_the_stated_lifetime_is_honoured():
    responses.post(TOKEN, json={"accessToken": "I1", "tokenType": "Bearer", "expiresIn": 120})
    responses.post(TOKEN, json={"accessToken": "I2", "tokenType": "Bearer", "expiresIn": 120})
    responses.post(GET, json={"cardholderId": "p-1"})
    isic = Isic.connect(ROOT, "cid", "csecret")
    clock = FakeClock()
    isic.http.auth.clock = clock
    isic.get_cardholder("p-1")
    clock.now = 89  # 120 s less the 30 s leeway: still valid
    isic.get_cardholder("p-1")
    assert len(calls_to(TOKEN)) == 1
    clock.now = 91
    isic.get_cardholder("p-1")
    assert len(calls_to(TOKEN)) == 2
    assert calls_to(GET)[-1].request.headers["Authorization"] == "Bearer I2"


@responses.activate
def test_401_fetches_exactly_one_new_token(isic):
    responses.post(TOKEN, json={"accessToken": "I2", "tokenType": "Bearer", "expiresIn": 300})
    responses.post(GET, status=401)
    responses.post(GET, json={"cardholderId": "p-1"})
    assert isic.get_cardholder("p-1") == {"cardholderId": "p-1"}
    assert len(calls_to(TOKEN)) == 2
    assert [c.request.headers["Authorization"] for c in calls_to(GET)] == ["Bearer I1", "Bearer I2"]


@responses.activate
def test_a_token_answer_without_a_token_is_fatal():
    responses.post(TOKEN, json={"tokenType": "Bearer", "expiresIn": 300})
    with pytest.raises(FatalError, match="auth.token"):
        Isic.connect(ROOT, "cid", "csecret").get_cardholder("p-1")
    assert len(responses.calls) == 1


# cardholder and allow-list -------------------------------------------------------------
@responses.activate
def test_set_cardholder_sends_exactly_the_seven_fields(isic):
    responses.post(SET, json={"cardholderId": "p-1", "firstName": "Erika"})
    assert isic.set_cardholder("p-1", **PERSON)["cardholderId"] == "p-1"
    assert sent(calls_to(SET)[0]) == {
        "cardholderId": "p-1",
        "firstName": "Erika",
        "lastName": "Mustermann",
        "dateOfBirth": "2004-05-01",
        "email": "erika@example.de",
        "institutionName": "TU Dresden",
        "studentStatus": "student",
    }
    assert set(sent(calls_to(SET)[0])) == ALLOWED_FIELDS


@responses.activate
def test_set_cardholder_is_retried_as_an_upsert(isic, no_sleep):
    responses.post(SET, status=503)
    responses.post(SET, json={"cardholderId": "p-1"})
    isic.set_cardholder("p-1", **PERSON)
    assert len(calls_to(SET)) == 2 and len(no_sleep) == 1


@pytest.mark.parametrize("field", ["iban", "postalCode", "phonePassword", "onlineBankingLogin", "onlineBankingPin"])
def test_allow_list_refuses_what_seed_003_lists_but_the_card_does_not_need(field):
    with pytest.raises(ValueError, match=field) as info:
        check_allowed({"cardholderId": "p-1", field: "DE02120300000000202051"})
    assert "DE02" not in str(info.value)


@responses.activate
def test_refusals_come_before_any_request(isic):
    with pytest.raises(ValueError, match="student_status"):
        isic.set_cardholder("p-1", **{**PERSON, "student_status": "teacher"})
    with pytest.raises(ValueError, match="date_of_birth"):
        isic.set_cardholder("p-1", **{**PERSON, "date_of_birth": datetime(2004, 5, 1)})
    with pytest.raises(ValueError, match="date_of_birth"):
        isic.set_cardholder("p-1", **{**PERSON, "date_of_birth": "2004-05-01"})
    assert len(responses.calls) == 0


def test_allow_list_is_the_seven_cardholder_keys():
    assert ALLOWED_FIELDS == {
        "cardholderId",
        "firstName",
        "lastName",
        "dateOfBirth",
        "email",
        "institutionName",
        "studentStatus",
    }


# photo ---------------------------------------------------------------------------------
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256))


@responses.activate
def test_photo_goes_as_multipart_with_the_cardholder_id(isic):
    responses.post(PHOTO, json={"cardholderId": "p-1", "hasPhoto": True})
    assert isic.set_photo("p-1", JPEG, "image/jpeg") is None
    request = calls_to(PHOTO)[0].request
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    body = request.body
    assert b'name="cardholderId"\r\n\r\np-1\r\n' in body
    assert b'name="photo"; filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + JPEG in body


@responses.activate
def test_png_is_named_and_typed_as_png(isic):
    responses.post(PHOTO, json={"cardholderId": "p-1", "hasPhoto": True})
    isic.set_photo("p-1", b"\x89PNG\r\n\x1a\n....", "image/png")
    assert b'filename="photo.png"\r\nContent-Type: image/png' in calls_to(PHOTO)[0].request.body


@responses.activate
def test_other_media_types_and_mislabelled_photos_are_refused_before_any_request(isic):
    for media_type in ("application/pdf", "image/gif", "image/JPEG", ""):
        with pytest.raises(ValueError, match="media_type"):
            isic.set_photo("p-1", JPEG, media_type)
    mislabelled = ((b"", "image/jpeg"), (b"%PDF-1.7", "image/jpeg"), (JPEG, "image/png"))
    for photo, media_type in mislabelled:
        with pytest.raises(ValueError, match="photo is not"):
            isic.set_photo("p-1", photo, media_type)
    assert len(responses.calls) == 0


@responses.activate
def test_a_photo_the_issuer_did_not_keep_is_fatal(isic):
    responses.post(PHOTO, json={"cardholderId": "p-1", "hasPhoto": False})
    with pytest.raises(FatalError, match="setPhoto"):
        isic.set_photo("p-1", JPEG, "image/jpeg")


# cards ---------------------------------------------------------------------------------
@responses.activate
def test_request_card_lists_first_then_requests_once(isic):
    responses.post(
        LIST,
        json={"cards": [card("S1", "VOIDED")]},
        match=[matchers.json_params_matcher({"cardholderId": "p-1"})],
    )
    responses.post(REQUEST, json=card("S2"))
    assert isic.request_card("p-1")["cardNumber"] == "S2"
    assert sent(calls_to(REQUEST)[0]) == {"cardholderId": "p-1", "cardType": "ISIC"}
    ops = [c.operation for c in isic.http.drain_calls()]
    assert ops == ["auth.token", "cards.list", "cards.request"]


@responses.activate
def test_an_existing_card_is_returned_without_a_request(isic):
    responses.post(LIST, json={"cards": [card("S1", "VOIDED"), card("S2", "ACTIVE")]})
    assert isic.request_card("p-1")["cardNumber"] == "S2"
    assert calls_to(REQUEST) == []


@pytest.mark.parametrize("lost", [{"body": requests.exceptions.ConnectionError("reset")}, {"status": 502}])
@responses.activate
def test_a_lost_answer_is_looked_up_not_requested_again(isic, no_sleep, lost):
    responses.post(LIST, json={"cards": []})
    responses.post(LIST, json={"cards": [card("S3")]})
    responses.post(REQUEST, **lost)
    assert isic.request_card("p-1")["cardNumber"] == "S3"
    assert len(calls_to(REQUEST)) == 1  # not retried by the layer either
    assert len(calls_to(LIST)) == 2
    assert no_sleep == []


@responses.activate
def test_a_lost_answer_with_no_card_to_show_is_requested_once_more(isic, no_sleep):
    responses.post(LIST, json={"cards": []})
    responses.post(REQUEST, body=requests.exceptions.ReadTimeout("slow"))
    responses.post(REQUEST, json=card("S4"))
    assert isic.request_card("p-1")["cardNumber"] == "S4"
    assert len(calls_to(REQUEST)) == 2  # after the read timeout, looked up first
    assert len(calls_to(LIST)) == 2
    assert len(no_sleep) == 1  # the policy's backoff before asking again


@responses.activate
def test_requests_are_bounded_by_the_policy_when_every_answer_is_lost(isic, no_sleep):
    responses.post(LIST, json={"cards": []})
    responses.post(REQUEST, status=500)
    with pytest.raises(RetriableError, match=r"cards.request: HTTP 500 after 3 attempt") as info:
        isic.request_card("p-1")
    assert info.value.status == 500  # the last real status, not "not found"
    assert len(calls_to(REQUEST)) == 3  # RetryPolicy(3), each after a look-up
    assert len(calls_to(LIST)) == 1 + 3


@responses.activate
def test_a_refused_request_is_neither_retried_nor_looked_up(isic, no_sleep):
    responses.post(LIST, json={"cards": []})
    responses.post(REQUEST, status=422, json={"error": {"code": "NO_PHOTO", "message": "x"}})
    with pytest.raises(FatalError) as info:
        isic.request_card("p-1")
    assert info.value.status == 422 and info.value.attempts == 1
    assert len(calls_to(REQUEST)) == 1 and len(calls_to(LIST)) == 1
    assert no_sleep == []


@responses.activate
def test_cards_of_someone_else_are_refused(isic):
    responses.post(LIST, json={"cards": [card("S9", "ACTIVE", holder="p-other")]})
    with pytest.raises(FatalError, match="cards.list"):
        isic.request_card("p-1")
    assert calls_to(REQUEST) == []


@responses.activate
def test_cards_of_another_type_do_not_count(isic):
    responses.post(LIST, json={"cards": [{**card("T1", "ACTIVE"), "cardType": "ITIC"}]})
    responses.post(REQUEST, json=card("S5"))
    assert isic.request_card("p-1")["cardNumber"] == "S5"
    assert len(isic.cards("p-1")) == 1


@responses.activate
def test_void_card(isic):
    responses.post(STATUS, json=card("S2", "VOIDED"))
    assert isic.void_card("S2")["status"] == "VOIDED"
    assert sent(calls_to(STATUS)[0]) == {"cardNumber": "S2", "status": "VOIDED"}


# erasure -------------------------------------------------------------------------------
@responses.activate
def test_delete_is_pending_then_verified_by_404(isic):
    responses.post(DELETE, status=202, json={"status": "pending"})
    responses.post(GET, json={"cardholderId": "p-1", "deletionPending": True})
    responses.post(GET, status=404, json={"error": {"code": "NOT_FOUND", "message": "x"}})
    assert isic.delete_cardholder("p-1") == "pending"
    assert sent(calls_to(DELETE)[0]) == {"cardholderId": "p-1"}
    assert isic.deletion_verified("p-1") is False
    assert isic.deletion_verified("p-1") is True
    outcomes = [(c.operation, c.outcome) for c in isic.http.drain_calls()][1:]
    assert outcomes == [
        ("cardholders.delete", "ok"),
        ("cardholders.get", "ok"),
        ("cardholders.get", "absent"),
    ]


@responses.activate
def test_delete_of_an_absent_cardholder_is_gone(isic):
    responses.post(DELETE, status=404)
    assert isic.delete_cardholder("p-1") == "gone"
    assert len(calls_to(DELETE)) == 1


@responses.activate
def test_get_cardholder_is_none_on_404(isic):
    responses.post(GET, status=404)
    assert isic.get_cardholder("p-1") is None


# errors and settings -------------------------------------------------------------------
@responses.activate
def test_no_personal_data_in_errors(isic, no_sleep):
    message = "invalid email erika@example.de for Erika Mustermann"
    responses.post(SET, status=400, json={"error": {"code": "INVALID", "message": message}})
    with pytest.raises(FatalError) as info:
        isic.set_cardholder("p-1", **PERSON)
    text = str(info.value) + repr(info.value.args) + info.value.reason
    for personal in ("erika", "Erika", "Mustermann", "2004", "TU Dresden", "csecret", "I1"):
        assert personal not in text
    assert info.value.status == 400 and len(calls_to(SET)) == 1


def test_from_settings_needs_credentials(settings, monkeypatch):
    monkeypatch.delenv("PSYNC_ISIC_CLIENT_ID", raising=False)
    monkeypatch.setenv("PSYNC_ISIC_CLIENT_SECRET", "csecret")
    get_settings.cache_clear()
    with pytest.raises(FatalError, match="configure"):
        from_settings(get_settings())
    monkeypatch.setenv("PSYNC_ISIC_CLIENT_ID", "cid")
    monkeypatch.setenv("PSYNC_ISIC_BASE_URL", ROOT + "/")
    get_settings.cache_clear()
    assert from_settings(get_settings()).http.base_url == ROOT
