"""Nect connector against `responses` (the whole contract is assumed: see its docstring)."""

from __future__ import annotations

import json
import logging

import pytest
import requests
import responses
from responses import matchers

from connectors.nect import ApiKeyAuth, Nect, check_reference, from_settings
from connectors.transport import FatalError, RetriableError, RetryPolicy
from core.settings import get_settings

ROOT = "https://api.nect.test"
CASES = f"{ROOT}/v1/cases"
KEY = "k-secret-nect-4711"
REF = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
UUID = "9b2f3c1e-0d4a-4b8e-9c6f-2a1b3c4d5e6f"
CASE = f"{CASES}/{UUID}"


def sent(call) -> dict:
    return json.loads(call.request.body)


def calls_to(method: str, url: str) -> list:
    return [c for c in responses.calls if c.request.method == method and c.request.url.split("?")[0] == url]


def case(reference: str = REF, uuid: str = UUID, status: str = "created") -> dict:
    return {"caseUuid": uuid, "status": status, "reference": reference}


def lookup(*items: dict) -> None:
    responses.get(CASES, json={"items": list(items)}, match=[matchers.query_param_matcher({"reference": REF})])


@pytest.fixture
def nect():
    return Nect.connect(ROOT + "/", KEY, policy=RetryPolicy(3))


# auth and what leaves ------------------------------------------------------------------
@responses.activate
def test_every_request_carries_the_api_key_header(nect):
    responses.post(CASES, status=201, json=case())
    responses.get(CASE, json=case())
    nect.open_case(REF)
    nect.get_case(UUID)
    for call in responses.calls:
        assert call.request.headers["x-api-key"] == KEY
        assert "Authorization" not in call.request.headers
    assert KEY not in repr(nect.http.auth) and isinstance(nect.http.auth, ApiKeyAuth)


@responses.activate
def test_open_case_sends_the_pseudonym_and_nothing_else(nect):
    responses.post(CASES, status=201, json=case())
    assert nect.open_case(REF) == UUID
    assert sent(calls_to("POST", CASES)[0]) == {"reference": REF}
    assert [(c.operation, c.items) for c in nect.http.drain_calls()] == [("cases.create", 1)]


@pytest.mark.parametrize(
    "reference",
    ["erika@example.de", REF.upper(), REF[:31], REF + "0", "Erika Mustermann", "", None, 12345],
)
@responses.activate
def test_anything_but_a_pseudonym_is_refused_before_any_request(nect, reference):
    for call in (nect.open_case, nect.find_case):
        with pytest.raises(ValueError, match="pseudonymous") as info:
            call(reference)
        assert "erika" not in str(info.value) and "Mustermann" not in str(info.value)
    assert len(responses.calls) == 0 and nect.http.drain_calls() == []


def test_check_reference_accepts_our_pseudonyms():
    from models.identity import pseudonym

    check_reference(pseudonym(b"k" * 32, "person", "erika@example.de"))
    check_reference(REF)


# create: never twice -------------------------------------------------------------------
@responses.activate
def test_409_uses_the_existing_case_without_a_second_create(nect, no_sleep):
    responses.post(CASES, status=409, json={"error": {"code": "conflict", "message": "exists"}})
    lookup(case(status="completed"))
    assert nect.open_case(REF) == UUID
    assert len(calls_to("POST", CASES)) == 1 and len(calls_to("GET", CASES)) == 1
    assert [c.operation for c in nect.http.drain_calls()] == ["cases.create", "cases.lookup"]
    assert no_sleep == []


@pytest.mark.parametrize(
    "lost",
    [
        {"body": requests.exceptions.ConnectionError("reset")},
        {"body": requests.exceptions.ReadTimeout("slow")},
        {"status": 502},
    ],
)
@responses.activate
def test_lost_answer_found_by_lookup_is_not_created_again(nect, no_sleep, lost):
    responses.post(CASES, **lost)
    lookup(case())
    assert nect.open_case(REF) == UUID
    assert len(calls_to("POST", CASES)) == 1  # exactly one create
    assert no_sleep == []  # a create is not retried blindly


@responses.activate
def test_lost_answer_not_found_is_created_once_more(nect):
    responses.post(CASES, body=requests.exceptions.ConnectionError("reset"))
    responses.post(CASES, status=201, json=case())
    lookup()
    assert nect.open_case(REF) == UUID
    assert len(calls_to("POST", CASES)) == 2 and len(calls_to("GET", CASES)) == 1


@responses.activate
def test_creates_are_bounded_when_every_answer_is_lost(nect):
    responses.post(CASES, status=503)
    lookup()
    with pytest.raises(RetriableError) as info:
        nect.open_case(REF)
    assert len(calls_to("POST", CASES)) == 2 and len(calls_to("GET", CASES)) == 2
    assert REF not in str(info.value)


@responses.activate
def test_a_case_whose_deletion_is_pending_is_not_reused(nect):
    responses.post(CASES, status=409)
    lookup(case(status="deletion_pending"))
    with pytest.raises(RetriableError, match="409"):
        nect.open_case(REF)
    assert len(calls_to("POST", CASES)) == 1


@responses.activate
def test_a_refused_create_is_neither_retried_nor_looked_up(nect, no_sleep):
    responses.post(CASES, status=400, json={"error": {"code": "invalid_request", "message": "x"}})
    with pytest.raises(FatalError):
        nect.open_case(REF)
    assert len(responses.calls) == 1 and no_sleep == []


@responses.activate
def test_lookup_ignores_cases_with_another_reference(nect):
    responses.get(CASES, json={"items": [case(OTHER)]})
    assert nect.find_case(REF) is None


@responses.activate
def test_lookup_is_retried_as_a_read(nect, no_sleep):
    responses.get(CASES, status=503)
    lookup(case())
    assert nect.find_case(REF) == case()
    assert len(no_sleep) == 1


# erasure -------------------------------------------------------------------------------
@responses.activate
def test_delete_is_pending_then_verified_by_404(nect):
    responses.delete(CASE, status=202, json={"caseUuid": UUID, "status": "deletion_pending"})
    responses.get(CASE, json=case(status="deletion_pending"))
    responses.get(CASE, status=404, json={"error": {"code": "not_found", "message": "x"}})
    assert nect.delete_case(UUID) == "pending"
    assert nect.deletion_verified(UUID) is False
    assert nect.deletion_verified(UUID) is True
    outcomes = [(c.operation, c.outcome) for c in nect.http.drain_calls()]
    assert outcomes == [("cases.delete", "ok"), ("cases.get", "ok"), ("cases.get", "absent")]


@responses.activate
def test_delete_of_an_absent_case_is_gone(nect):
    responses.delete(CASE, status=404)
    assert nect.delete_case(UUID) == "gone"
    assert len(calls_to("DELETE", CASE)) == 1


@responses.activate
def test_get_case_is_none_on_404_and_the_case_otherwise(nect):
    responses.get(CASE, status=404)
    assert nect.get_case(UUID) is None
    responses.get(f"{CASES}/other", json=case(uuid="other", status="completed"))
    assert nect.get_case("other")["status"] == "completed"


@responses.activate
def test_uuid_is_one_path_segment(nect):
    responses.get(f"{CASES}/a%2F..%2Fb", status=404)
    assert nect.get_case("a/../b") is None


# errors and settings -------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 401, 403])
@responses.activate
def test_no_key_or_reference_in_errors_or_logs(nect, caplog, status):
    body = {"error": {"code": "x", "message": f"bad key {KEY} for reference {REF}"}}
    responses.post(CASES, status=status, json=body)
    with caplog.at_level(logging.DEBUG, logger="psync.http"), pytest.raises(FatalError) as info:
        nect.open_case(REF)
    text = str(info.value) + repr(info.value.args) + info.value.reason + caplog.text
    assert KEY not in text and REF not in text
    assert info.value.status == status and info.value.operation == "cases.create"


@responses.activate
def test_an_answer_that_is_not_json_is_fatal(nect):
    responses.post(CASES, status=201, body="<html>proxy</html>")
    with pytest.raises(FatalError, match="cases.create"):
        nect.open_case(REF)


def test_from_settings_needs_an_api_key(settings, monkeypatch):
    monkeypatch.delenv("PSYNC_NECT_API_KEY", raising=False)
    get_settings.cache_clear()
    with pytest.raises(FatalError, match="configure"):
        from_settings(get_settings())


def test_from_settings_reads_key_url_and_rate(settings, monkeypatch):
    monkeypatch.setenv("PSYNC_NECT_BASE_URL", ROOT + "/")
    monkeypatch.setenv("PSYNC_NECT_RATE_PER_SECOND", "2.5")
    monkeypatch.delenv("PSYNC_NECT_API_KEY", raising=False)
    get_settings.cache_clear()
    with pytest.raises(FatalError) as info:
        from_settings(get_settings())
    assert info.value.reason == "credentials not configured"
    monkeypatch.setenv("PSYNC_NECT_API_KEY", KEY)
    get_settings.cache_clear()
    nect = from_settings(get_settings())
    assert nect.http.base_url == ROOT and nect.http.limiter.rate == 2.5
    assert nect.http.auth._api_key == KEY
