"""CleverReach connector against answers recorded from the real API (recorded/cleverreach)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import responses
from responses import matchers

from connectors.cleverreach import ALLOWED_FIELDS, CleverReach, check_allowed
from connectors.transport import FatalError, RetryPolicy

ROOT = "https://cr.test"
API = f"{ROOT}/v3"
RECORDED = Path(__file__).parent / "recorded" / "cleverreach"


def recorded(name: str):
    return json.loads((RECORDED / name).read_text())


@pytest.fixture
def cr():
    responses.post(
        f"{ROOT}/oauth/token.php",
        json={"access_token": "T1", "expires_in": 3600, "scope": "rest"},
        match=[matchers.json_params_matcher({"grant_type": "client_credentials"})],
    )
    return CleverReach.connect(ROOT, "id", "secret", batch_size=250, policy=RetryPolicy(3))


def receivers(n: int) -> list[dict]:
    return [{"email": f"r{i}@example.de", "activated": 1} for i in range(n)]


@responses.activate
def test_token_uses_basic_auth_and_bearer(cr):
    responses.get(f"{API}/groups.json", json=recorded("getAllGroups.json"))
    groups = cr.groups()
    token_call, call = responses.calls
    assert token_call.request.headers["Authorization"].startswith("Basic ")
    assert call.request.headers["Authorization"] == "Bearer T1"
    assert groups[0]["id"] == "1297140" and isinstance(groups[0]["id"], str)


@responses.activate
def test_recorded_receiver_parses_as_is(cr):
    responses.get(f"{API}/groups.json/240803/receivers/4285", json=recorded("recipientInfo.json"))
    receiver = cr.get_receiver("240803", "4285")
    assert receiver["id"] == "4285" and receiver["active"] is True
    assert receiver["deactivated"] == 0 and receiver["events"][0]["type"] == "api"


@responses.activate
def test_absent_receiver_is_none_for_404_and_empty_list(cr):
    responses.get(f"{API}/groups.json/1/receivers/a", status=404)
    responses.get(f"{API}/groups.json/1/receivers/b", json=[])
    assert cr.get_receiver("1", "a") is None
    assert cr.get_receiver("1", "b") is None


@responses.activate
def test_upsert_sends_batches_of_the_configured_size(cr):
    responses.post(f"{API}/groups.json/1/receivers/upsertplus", json=recorded("recipientsMassUpdate.json"))
    cr.upsert("1", "newsletter", receivers(600))
    sizes = [len(json.loads(c.request.body)) for c in responses.calls[1:]]
    assert sizes == [250, 250, 100]


@responses.activate
def test_413_halves_the_batch_and_retries(cr):
    url = f"{API}/groups.json/1/receivers/upsertplus"
    responses.post(url, status=413)
    responses.post(url, json=[])
    cr.upsert("1", "newsletter", receivers(250))
    sizes = [len(json.loads(c.request.body)) for c in responses.calls[1:]]
    assert sizes == [250, 125, 125]


@responses.activate
def test_413_on_a_single_receiver_is_fatal(cr):
    responses.post(f"{API}/groups.json/1/receivers/upsertplus", status=413)
    with pytest.raises(FatalError):
        cr.upsert("1", "newsletter", receivers(1))
    assert len(responses.calls) == 1 + 1  # token, then the one-receiver batch once


@responses.activate
def test_newsletter_never_gets_an_insurance_number(cr):
    bad = {"email": "a@example.de", "attributes": {"insurance_number": "A123456780"}}
    with pytest.raises(ValueError, match="insurance_number"):
        cr.upsert("1", "newsletter", [bad])
    assert len(responses.calls) == 0  # refused before any call, token included


def test_allow_lists_differ_only_by_the_insurance_number():
    news, offers = ALLOWED_FIELDS["newsletter"], ALLOWED_FIELDS["service_offers"]
    assert offers["attributes"] - news["attributes"] == {"insurance_number"}
    check_allowed("service_offers", {"email": "a@b.de", "attributes": {"insurance_number": "x"}})
    with pytest.raises(ValueError):
        check_allowed("newsletter", {"email": "a@b.de", "phone": "1"})


@responses.activate
def test_listing_pages_from_zero_and_stops_on_a_short_page(cr):
    url = f"{API}/groups.json/1/receivers"
    responses.get(
        url,
        json=[{"email": "a"}, {"email": "b"}],
        match=[matchers.query_param_matcher({"page": "0", "pagesize": "2", "type": "inactive"})],
    )
    responses.get(
        url,
        json=[{"email": "c"}],
        match=[matchers.query_param_matcher({"page": "1", "pagesize": "2", "type": "inactive"})],
    )
    emails = [r["email"] for r in cr.iter_receivers("1", kind="inactive", page_size=2)]
    assert emails == ["a", "b", "c"]
    assert len(responses.calls) == 3


@responses.activate
def test_listing_an_exact_multiple_stops_on_the_empty_page(cr):
    url = f"{API}/groups.json/1/receivers"
    responses.get(url, json=[{"email": "a"}, {"email": "b"}])
    responses.get(url, json=[])
    assert len(list(cr.iter_receivers("1", page_size=2))) == 2
    assert len(responses.calls) == 3


@responses.activate
def test_listing_has_a_page_limit(cr):
    responses.get(f"{API}/groups.json/1/receivers", json=[{"email": "a"}])
    with pytest.raises(FatalError):
        list(cr.iter_receivers("1", page_size=1, max_pages=3))
    assert len(responses.calls) == 1 + 3


@responses.activate
def test_deactivate_and_delete_report_absence(cr):
    responses.put(
        f"{API}/groups.json/1/receivers/a%40example.de/deactivate", json=recorded("recipientsDeactivate.json")
    )
    responses.put(f"{API}/groups.json/1/receivers/b%40example.de/deactivate", status=404)
    responses.delete(f"{API}/groups.json/1/receivers/7", body="true")
    responses.delete(f"{API}/groups.json/1/receivers/8", status=404)
    assert cr.deactivate("1", "a@example.de") is True
    assert cr.deactivate("1", "b@example.de") is False
    assert cr.delete("1", "7") is True
    assert cr.delete("1", "8") is False


@responses.activate
def test_bulk_delete_batches(cr):
    responses.post(f"{API}/receivers/delete.json", body="true")
    assert cr.bulk_delete([f"r{i}@example.de" for i in range(300)]) == 300
    sizes = [len(json.loads(c.request.body)["receivers"]) for c in responses.calls[1:]]
    assert sizes == [250, 50]


@responses.activate
def test_every_call_including_the_token_is_in_the_call_log(cr):
    responses.get(f"{API}/groups.json", json=[])
    cr.groups()
    assert [c.operation for c in cr.http.drain_calls()] == ["oauth.token", "groups.list"]
    assert cr.http.drain_calls() == []


def test_the_session_reads_proxy_and_ca_settings_from_the_environment_once(monkeypatch):
    from connectors.transport import environment_resolved_session

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "sandbox.local")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    session = environment_resolved_session("https://rest.cleverreach.com")
    assert session.trust_env is False  # no walk over os.environ on every request
    assert session.proxies["https"] == "http://proxy.example:3128"
    assert session.verify == "/etc/ssl/bundle.pem"
    assert environment_resolved_session("http://sandbox.local:8700/cleverreach").proxies == {}
