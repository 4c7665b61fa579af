"""Flexperto connector against `responses` (the whole contract is assumed: see its docstring)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest
import requests
import responses
from responses import matchers

from connectors.flexperto import ALLOWED_FIELDS, Flexperto, check_allowed, from_settings
from connectors.transport import FatalError, RetryPolicy
from core.settings import get_settings

ROOT = "https://mkk.live.flexperto.test"
API = f"{ROOT}/api/v2"
CUSTOMERS = f"{API}/customers"
ARCHIVES = f"{API}/archives"


def sent(call) -> dict:
    return json.loads(call.request.body)


def calls_to(method: str, url: str) -> list:
    return [c for c in responses.calls if c.request.method == method and c.request.url.split("?")[0] == url]


@pytest.fixture
def fx():
    responses.post(
        f"{API}/oauth/token",
        json={"access_token": "F1", "token_type": "Bearer", "expires_in": 3600},
    )
    return Flexperto.connect(ROOT, "cid", "csecret", policy=RetryPolicy(3))


@responses.activate
def test_client_credentials_then_bearer(fx):
    responses.get(f"{CUSTOMERS}/7", json={"id": 7, "external_id": "p-1"})
    assert fx.get_customer("7") == {"id": 7, "external_id": "p-1"}
    token_call, call = responses.calls
    assert token_call.request.headers["Authorization"].startswith("Basic ")
    assert parse_qs(token_call.request.body) == {"grant_type": ["client_credentials"]}
    assert call.request.headers["Authorization"] == "Bearer F1"


@responses.activate
def test_create_sends_only_the_given_contact_data(fx):
    responses.post(CUSTOMERS, status=201, json={"id": 7})
    assert fx.upsert_customer("p-1", "erika@example.de", None) == "7"
    assert sent(calls_to("POST", CUSTOMERS)[0]) == {"external_id": "p-1", "email": "erika@example.de"}
    assert [c.operation for c in fx.http.drain_calls()] == ["auth.token", "customers.create"]


def test_allow_list_is_contact_data_only():
    assert ALLOWED_FIELDS == {"external_id", "email", "phone"}
    with pytest.raises(ValueError, match="insurance_number"):
        check_allowed({"external_id": "p-1", "insurance_number": "A123456780"})


@responses.activate
def test_409_uses_the_existing_customer_without_a_second_create(fx):
    responses.post(CUSTOMERS, status=409)
    responses.get(
        CUSTOMERS,
        json={"items": [{"id": 7, "external_id": "p-1"}]},
        match=[matchers.query_param_matcher({"external_id": "p-1"})],
    )
    assert fx.upsert_customer("p-1", "erika@example.de", "+49301234567") == "7"
    assert len(calls_to("POST", CUSTOMERS)) == 1
    assert [c.request.method for c in responses.calls[1:]] == ["POST", "GET"]  # no update


@responses.activate
def test_lost_answer_found_by_lookup_is_not_created_again(fx):
    responses.post(CUSTOMERS, body=requests.exceptions.ConnectionError("reset"))
    responses.get(CUSTOMERS, json={"items": [{"id": 7, "external_id": "p-1"}]})
    assert fx.upsert_customer("p-1", None, "+49301234567") == "7"
    assert len(calls_to("POST", CUSTOMERS)) == 1


@responses.activate
def test_lost_answer_not_found_is_created_once_more(fx):
    responses.post(CUSTOMERS, body=requests.exceptions.ReadTimeout("slow"))
    responses.post(CUSTOMERS, status=201, json={"id": 8})
    responses.get(CUSTOMERS, json={"items": []})
    assert fx.upsert_customer("p-1", "erika@example.de", None) == "8"
    assert len(calls_to("POST", CUSTOMERS)) == 2
    assert len(calls_to("GET", CUSTOMERS)) == 1


@responses.activate
def test_lookup_ignores_customers_with_another_external_id(fx):
    responses.get(CUSTOMERS, json={"items": [{"id": 3, "external_id": "p-other"}]})
    assert fx.find_customer("p-1") is None


@responses.activate
def test_no_personal_data_in_errors(fx):
    responses.post(CUSTOMERS, status=400, json={"error": "invalid email erika@example.de"})
    with pytest.raises(FatalError) as info:
        fx.upsert_customer("p-1", "erika@example.de", "+49301234567")
    assert "erika" not in str(info.value) and "4930" not in str(info.value)
    assert calls_to("GET", CUSTOMERS) == []  # a refusal is not looked up


# erasure -------------------------------------------------------------------------------
def archives_answer(*ids: str) -> dict:
    return {"items": [{"id": i, "customer_id": "7", "type": "chat"} for i in ids]}


@responses.activate
def test_purge_deletes_archives_then_customer_and_verifies(fx):
    responses.get(
        ARCHIVES, json=archives_answer("a1", "a2"), match=[matchers.query_param_matcher({"customer_id": "7"})]
    )
    responses.get(ARCHIVES, json=archives_answer())
    responses.delete(f"{ARCHIVES}/a1", status=204)
    responses.delete(f"{ARCHIVES}/a2", status=404)  # already gone: fine
    responses.delete(f"{CUSTOMERS}/7", status=204)
    responses.get(f"{CUSTOMERS}/7", status=404)
    assert fx.purge("7") is True
    ops = [c.operation for c in fx.http.drain_calls()][1:]
    assert ops == [
        "archives.list",
        "archives.delete",
        "archives.delete",
        "customers.delete",
        "customers.get",
        "archives.list",
    ]


@responses.activate
def test_purge_is_false_while_the_customer_still_answers(fx):
    responses.get(ARCHIVES, json=archives_answer())
    responses.delete(f"{CUSTOMERS}/7", status=204)
    responses.get(f"{CUSTOMERS}/7", json={"id": 7})
    assert fx.purge("7") is False


@responses.activate
def test_purge_is_false_while_archives_remain(fx):
    responses.get(ARCHIVES, json=archives_answer("a1"))
    responses.get(ARCHIVES, json=archives_answer("a3"))  # appeared meanwhile
    responses.delete(f"{ARCHIVES}/a1", status=204)
    responses.delete(f"{CUSTOMERS}/7", status=404)
    responses.get(f"{CUSTOMERS}/7", status=404)
    assert fx.purge("7") is False


@responses.activate
def test_archives_of_someone_else_are_never_deleted(fx):
    responses.get(ARCHIVES, json={"items": [{"id": "x", "customer_id": "99"}]})
    with pytest.raises(FatalError):
        fx.purge("7")
    assert [c.request.method for c in responses.calls[1:]] == ["GET"]


# settings ------------------------------------------------------------------------------
def test_from_settings_needs_credentials(settings, monkeypatch):
    monkeypatch.delenv("PSYNC_FLEXPERTO_CLIENT_ID", raising=False)
    monkeypatch.setenv("PSYNC_FLEXPERTO_CLIENT_SECRET", "csecret")
    get_settings.cache_clear()
    with pytest.raises(FatalError, match="configure"):
        from_settings(get_settings())
    monkeypatch.setenv("PSYNC_FLEXPERTO_CLIENT_ID", "cid")
    monkeypatch.setenv("PSYNC_FLEXPERTO_BASE_URL", ROOT + "/")
    get_settings.cache_clear()
    assert from_settings(get_settings()).http.base_url == ROOT
