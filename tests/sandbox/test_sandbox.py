"""Tests for the processor sandbox (CleverReach imitation), over HTTP only."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
import requests
import uvicorn
from fastapi.testclient import TestClient

from sandbox.app import create_app

CR = "/cleverreach"
CREDS = ("psync-sandbox", "sandbox-secret")
GROUP_KEYS = ["id", "name", "locked", "backup", "receiver_info", "stamp", "last_mailing", "last_changed"]
RECEIVER_KEYS = [
    "id",
    "email",
    "imported",
    "bounced",
    "group_id",
    "activated",
    "registered",
    "deactivated",
    "last_ip",
    "last_location",
    "last_client",
    "points",
    "stars",
    "source",
    "attributes",
    "global_attributes",
    "active",
    "conversion_rate",
    "open_rate",
    "click_rate",
    "tags",
    "events",
    "orders",
]
UNAUTHORIZED = {"error": {"code": 401, "message": "Unauthorized: token expired or invalid"}}


def get_token(client) -> str:
    r = client.post(f"{CR}/oauth/token.php", auth=CREDS, json={"grant_type": "client_credentials"})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client():
    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def api(client):
    """TestClient already carrying a valid bearer token."""
    client.headers.update(auth(get_token(client)))
    return client


def upsert(api, items, gid="1001", prefix="groups.json"):
    return api.post(f"{CR}/v3/{prefix}/{gid}/receivers/upsertplus", json=items)


def state(client) -> dict:
    r = client.get("/_sandbox/state")
    assert r.status_code == 200
    return r.json()


def receivers_of(client, gid="1001") -> dict:
    return state(client)["cleverreach"]["groups"][gid]["receivers"]


# -- auth -------------------------------------------------------------------


def test_token_is_issued_with_oauth_shape(client):
    r = client.post(f"{CR}/oauth/token.php", auth=CREDS, json={"grant_type": "client_credentials"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["expires_in"] == 3600 and body["token_type"] == "bearer"
    assert body["access_token"] != get_token(client)  # random per call
    assert client.get(f"{CR}/v3/groups.json", headers=auth(body["access_token"])).status_code == 200


def test_token_rejects_wrong_credentials_and_grant(client):
    r = client.post(f"{CR}/oauth/token.php", auth=("psync-sandbox", "wrong"), json={"grant_type": "client_credentials"})
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client" and r.json()["error_description"]
    r = client.post(f"{CR}/oauth/token.php", json={"grant_type": "client_credentials"})
    assert r.status_code == 401
    r = client.post(f"{CR}/oauth/token.php", auth=CREDS, json={"grant_type": "password"})
    assert r.status_code == 400


def test_v3_requires_valid_bearer_token(client):
    assert client.get(f"{CR}/v3/groups.json").json() == UNAUTHORIZED
    r = client.get(f"{CR}/v3/groups.json", headers=auth("not-a-token"))
    assert r.status_code == 401 and r.json() == UNAUTHORIZED
    r = client.get(f"{CR}/v3/groups.json", headers={"Authorization": "Basic cHN5bmMtc2FuZGJveDpzYW5kYm94LXNlY3JldA=="})
    assert r.status_code == 401


def test_expire_tokens_revokes_every_token(client):
    old = get_token(client)
    assert client.get(f"{CR}/v3/groups", headers=auth(old)).status_code == 200
    r = client.post("/_sandbox/cleverreach/expire-tokens")
    assert r.status_code == 200 and r.json()["revoked"] >= 1
    r = client.get(f"{CR}/v3/groups", headers=auth(old))
    assert r.status_code == 401 and r.json() == UNAUTHORIZED
    assert client.get(f"{CR}/v3/groups", headers=auth(get_token(client))).status_code == 200


def test_token_expires_after_ttl():
    with TestClient(create_app(token_ttl_s=0)) as c:
        r = c.post(f"{CR}/oauth/token.php", auth=CREDS, json={"grant_type": "client_credentials"})
        assert r.json()["expires_in"] == 0
        assert c.get(f"{CR}/v3/groups", headers=auth(r.json()["access_token"])).status_code == 401


def test_token_endpoint_accepts_form_encoding(client):
    r = client.post(f"{CR}/oauth/token.php", auth=CREDS, data={"grant_type": "client_credentials"})
    assert r.status_code == 200 and r.json()["access_token"]


# -- groups -----------------------------------------------------------------


def test_initial_groups_and_create(api):
    groups = api.get(f"{CR}/v3/groups.json").json()
    assert [(g["id"], g["name"]) for g in groups] == [("1001", "Newsletter"), ("1002", "Mehrwert- und Serviceangebote")]
    for g in groups:
        assert list(g) == GROUP_KEYS
        assert g["locked"] is False and g["backup"] is True and g["last_mailing"] == 0
        assert isinstance(g["stamp"], int) and g["stamp"] > 1_600_000_000
    r = api.post(f"{CR}/v3/groups.json", json={"name": "Shop"})
    assert r.status_code == 200
    new = r.json()
    assert isinstance(new["id"], str) and new["id"] not in {"1001", "1002"} and new["name"] == "Shop"
    assert len(api.get(f"{CR}/v3/groups").json()) == 3
    assert api.get(f"{CR}/v3/groups.json/{new['id']}").json() == new
    assert api.post(f"{CR}/v3/groups.json", json={}).status_code == 400


# -- upsert -----------------------------------------------------------------


def test_upsert_creates_receivers_with_recorded_shape(api):
    r = upsert(
        api,
        [
            {
                "email": "Anna@Example.com",
                "source": "shop",
                "activated": 1700000000,
                "global_attributes": {"firstname": "Anna"},
                "attributes": {"customer_no": "42"},
                "tags": ["vip"],
            },
            {"email": "bob@example.com"},
        ],
    )
    assert r.status_code == 200
    anna, bob = r.json()
    assert list(anna) == RECEIVER_KEYS
    assert anna["email"] == "anna@example.com" and anna["group_id"] == "1001"
    assert isinstance(anna["id"], str) and anna["id"] != bob["id"]
    assert anna["active"] is True and anna["activated"] == 1700000000 and anna["deactivated"] == 0
    assert anna["global_attributes"] == {"firstname": "Anna"} and anna["attributes"] == {"customer_no": "42"}
    assert anna["tags"] == ["vip"] and anna["source"] == "shop" and anna["orders"] == []
    assert anna["events"] == [
        {
            "stamp": anna["events"][0]["stamp"],
            "type": "api",
            "type_id": "REST insert",
            "value": "",
            "mailing_id": "0",
            "groups_id": "1001",
        }
    ]
    assert bob["active"] is False and bob["activated"] == 0 and bob["registered"] > 1_600_000_000
    assert set(receivers_of(api)) == {"anna@example.com", "bob@example.com"}


def test_upsert_repeat_is_noop(api):
    batch = [{"email": "a@example.com", "activated": 1700000000, "tags": ["x"], "global_attributes": {"f": "1"}}]
    first = upsert(api, batch).json()
    before = receivers_of(api)
    second = upsert(api, batch).json()
    assert second == first
    assert receivers_of(api) == before
    assert len(before["a@example.com"]["events"]) == 1


def test_upsert_merges_into_existing_receiver(api):
    upsert(
        api,
        [
            {
                "email": "a@example.com",
                "source": "shop",
                "global_attributes": {"firstname": "A", "lastname": "B"},
                "attributes": {"x": "1"},
                "tags": ["one", "two"],
            }
        ],
    )
    rid = receivers_of(api)["a@example.com"]["id"]
    r = upsert(
        api,
        [
            {
                "email": "A@EXAMPLE.COM",
                "activated": 1700000001,
                "global_attributes": {"lastname": "C"},
                "attributes": {"y": "2"},
                "tags": ["two", "three"],
            }
        ],
    )
    merged = r.json()[0]
    assert merged["id"] == rid
    assert merged["source"] == "shop"  # not provided -> unchanged
    assert merged["global_attributes"] == {"firstname": "A", "lastname": "C"}
    assert merged["attributes"] == {"x": "1", "y": "2"}
    assert merged["tags"] == ["one", "two", "three"]
    assert merged["active"] is True
    assert [e["type_id"] for e in merged["events"]] == ["REST insert", "REST update"]
    deactivated = upsert(api, [{"email": "a@example.com", "deactivated": 1700000002}]).json()[0]
    assert deactivated["active"] is False and deactivated["activated"] == 1700000001
    assert len(receivers_of(api)) == 1


def test_upsert_over_1000_is_413_and_changes_nothing(api):
    items = [{"email": f"u{i}@example.com"} for i in range(1001)]
    r = upsert(api, items)
    assert r.status_code == 413
    assert r.json() == {"error": {"code": 413, "message": "Request Entity Too Large"}}
    assert receivers_of(api) == {}
    assert upsert(api, items[:1000]).status_code == 200
    assert len(receivers_of(api)) == 1000


@pytest.mark.parametrize("bad", ["no-at-sign", "two@@example.com", "@example.com", "user@", 42, None])
def test_upsert_invalid_email_rejects_whole_batch(api, bad):
    r = upsert(api, [{"email": "ok@example.com"}, {"email": bad}])
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 400
    assert "ok@example.com" not in r.text and (not isinstance(bad, str) or bad not in r.json()["error"]["message"])
    assert receivers_of(api) == {}


def test_upsert_unknown_group_is_404(api):
    r = upsert(api, [{"email": "a@example.com"}], gid="9999")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404


# -- read -------------------------------------------------------------------


def test_get_receiver_by_email_and_id_and_404(api):
    created = upsert(api, [{"email": "a@example.com"}]).json()[0]
    assert api.get(f"{CR}/v3/groups.json/1001/receivers/a@example.com").json() == created
    assert api.get(f"{CR}/v3/groups.json/1001/receivers/A@Example.com").json() == created
    assert api.get(f"{CR}/v3/groups.json/1001/receivers/{created['id']}").json() == created
    assert api.get(f"{CR}/v3/receivers.json/a@example.com").json() == created
    missing = api.get(f"{CR}/v3/groups.json/1002/receivers/a@example.com")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": 404, "message": "Not Found: invalid receiver"}}
    assert "example.com" not in missing.text
    assert api.get(f"{CR}/v3/receivers.json/nobody@example.com").status_code == 404


def test_paging_is_zero_based_with_short_last_page(api):
    upsert(api, [{"email": f"u{i:02d}@example.com", "activated": 1700000000 if i % 2 else 0} for i in range(23)])
    url = f"{CR}/v3/groups.json/1001/receivers"
    pages = [api.get(url, params={"page": p, "pagesize": 10}).json() for p in range(4)]
    assert [len(p) for p in pages] == [10, 10, 3, 0]
    emails = [r["email"] for page in pages for r in page]
    assert emails == [f"u{i:02d}@example.com" for i in range(23)]
    ids = [int(r["id"]) for page in pages for r in page]
    assert ids == sorted(ids)
    active = api.get(f"{CR}/v3/groups/1001/receivers", params={"type": "active"}).json()
    inactive = api.get(f"{CR}/v3/groups/1001/receivers", params={"type": "inactive"}).json()
    assert len(active) == 11 and all(r["active"] for r in active)
    assert len(inactive) == 12 and not any(r["active"] for r in inactive)
    assert len(api.get(f"{CR}/v3/groups/1001/receivers").json()) == 23  # defaults: page 0, 500, all
    assert api.get(f"{CR}/v3/groups/1001/receivers", params={"type": "bogus"}).status_code == 400


# -- state changes ----------------------------------------------------------


def test_deactivate_and_activate(api):
    upsert(api, [{"email": "a@example.com", "activated": 1700000000}])
    base = f"{CR}/v3/groups.json/1001/receivers/a@example.com"
    r = api.put(f"{base}/deactivate")
    assert r.status_code == 200 and r.json() is True
    got = api.get(base).json()
    assert got["active"] is False and got["deactivated"] > 1_600_000_000
    r = api.put(f"{base}/activate")
    assert r.json() is True
    got = api.get(base).json()
    assert got["active"] is True and got["deactivated"] == 0 and got["activated"] > 1700000000
    assert api.put(f"{CR}/v3/groups.json/1001/receivers/x@example.com/deactivate").status_code == 404


def test_delete_from_group_and_account_wide(api):
    upsert(api, [{"email": "a@example.com"}, {"email": "b@example.com"}], gid="1001")
    upsert(api, [{"email": "a@example.com"}, {"email": "b@example.com"}], gid="1002")
    r = api.delete(f"{CR}/v3/groups.json/1001/receivers/a@example.com")
    assert r.status_code == 200 and r.json() is True
    assert "a@example.com" not in receivers_of(api, "1001") and "a@example.com" in receivers_of(api, "1002")
    assert api.delete(f"{CR}/v3/groups.json/1001/receivers/a@example.com").status_code == 404
    assert api.delete(f"{CR}/v3/receivers.json/b@example.com").json() is True
    assert "b@example.com" not in receivers_of(api, "1001") and "b@example.com" not in receivers_of(api, "1002")
    assert api.delete(f"{CR}/v3/receivers.json/b@example.com").status_code == 404


@pytest.mark.parametrize("path", ["receivers/delete.json", "receivers.json/delete.json", "receivers/delete"])
def test_bulk_delete(api, path):
    upsert(api, [{"email": f"u{i}@example.com"} for i in range(5)], gid="1001")
    upsert(api, [{"email": "u0@example.com"}], gid="1002")
    r = api.post(f"{CR}/v3/{path}", json={"receivers": ["u0@example.com", "U1@example.com", "ghost@example.com"]})
    assert r.status_code == 200 and r.json() is True
    assert set(receivers_of(api, "1001")) == {"u2@example.com", "u3@example.com", "u4@example.com"}
    assert receivers_of(api, "1002") == {}
    assert api.post(f"{CR}/v3/{path}", json={"receivers": ["u0@example.com"]}).json() is True  # idempotent
    too_many = api.post(f"{CR}/v3/{path}", json={"receivers": [f"u{i}@example.com" for i in range(1001)]})
    assert too_many.status_code == 413
    assert len(receivers_of(api, "1001")) == 3


def test_unsubscribe_control_route(api):
    upsert(api, [{"email": "a@example.com", "activated": 1700000000}], gid="1001")
    upsert(api, [{"email": "a@example.com", "activated": 1700000000}], gid="1002")
    r = api.post("/_sandbox/cleverreach/unsubscribe", json={"email": "A@example.com"})
    assert r.status_code == 200
    for gid in ("1001", "1002"):
        rec = receivers_of(api, gid)["a@example.com"]
        assert rec["active"] is False and rec["deactivated"] > 0 and rec["activated"] == 1700000000
    assert api.post("/_sandbox/cleverreach/unsubscribe", json={"email": "ghost@example.com"}).status_code == 404


def test_reset_restores_initial_state(api):
    token = api.headers["Authorization"]
    api.post(f"{CR}/v3/groups.json", json={"name": "Extra"})
    upsert(api, [{"email": "a@example.com"}])
    api.post(f"{CR}/v3/attributes.json", json={"name": "firstname", "type": "text"})
    r = api.post("/_sandbox/reset")
    assert r.status_code == 200
    s = state(api)
    assert s["cleverreach"]["groups"] == {
        "1001": {"name": "Newsletter", "receivers": {}},
        "1002": {"name": "Mehrwert- und Serviceangebote", "receivers": {}},
    }
    assert s["cleverreach"]["calls"] == {} and s["cleverreach"]["attributes"] == []
    assert set(s["faults"].values()) == {0}
    assert api.get(f"{CR}/v3/groups", headers={"Authorization": token}).status_code == 401  # tokens revoked
    api.headers["Authorization"] = f"Bearer {get_token(api)}"
    assert upsert(api, [{"email": "b@example.com"}]).json()[0]["id"] == "1"  # id counter restarted


@pytest.mark.parametrize("collection", ["groups", "groups.json"])
def test_paths_with_and_without_json_suffix(api, collection):
    created = upsert(api, [{"email": "a@example.com"}], prefix=collection).json()[0]
    assert api.get(f"{CR}/v3/{collection}").status_code == 200
    assert api.get(f"{CR}/v3/{collection}/1001/receivers/a@example.com").json() == created
    assert api.get(f"{CR}/v3/{collection}/1001/receivers").json() == [created]
    other = "receivers" if collection == "groups" else "receivers.json"
    assert api.get(f"{CR}/v3/{other}/a@example.com").json() == created
    attributes = "attributes" if collection == "groups" else "attributes.json"
    assert api.get(f"{CR}/v3/{attributes}").json() == []
    # both spellings are counted under one normalised template
    assert state(api)["cleverreach"]["calls"]["GET /v3/groups/{gid}/receivers/{email_or_id}"] == 1


def test_global_attributes(api):
    r = api.post(f"{CR}/v3/attributes.json", json={"name": "firstname", "type": "text", "description": "First name"})
    assert r.status_code == 200
    assert r.json() == {
        "id": r.json()["id"],
        "groups_id": 0,
        "name": "firstname",
        "description": "First name",
        "preview_value": "",
        "value": None,
        "type": "text",
        "tag": "{FIRSTNAME}",
    }
    assert isinstance(r.json()["id"], int)
    assert api.post(f"{CR}/v3/attributes", json={"name": "FirstName", "type": "text"}).status_code == 409
    assert api.post(f"{CR}/v3/attributes", json={"name": "x", "type": "color"}).status_code == 400
    assert [a["name"] for a in api.get(f"{CR}/v3/attributes.json").json()] == ["firstname"]


# -- state / calls ----------------------------------------------------------


def test_state_shape_and_call_counts(client):
    assert client.get(f"{CR}/v3/groups.json").status_code == 401  # not counted: failed auth
    client.headers.update(auth(get_token(client)))
    upsert(client, [{"email": "a@example.com"}])
    upsert(client, [{"email": "b@example.com"}], prefix="groups")
    client.get(f"{CR}/v3/groups.json/1001/receivers", params={"page": 0})
    s = state(client)
    assert set(s) == {"cleverreach", "timify", "flexperto", "isic", "nect", "faults"}
    assert set(s["cleverreach"]) >= {"groups", "calls"}
    assert set(s["cleverreach"]["groups"]) == {"1001", "1002"}
    assert set(s["cleverreach"]["groups"]["1001"]) == {"name", "receivers"}
    assert list(s["cleverreach"]["groups"]["1001"]["receivers"]["a@example.com"]) == RECEIVER_KEYS
    assert s["cleverreach"]["calls"] == {
        "POST /oauth/token.php": 1,
        "POST /v3/groups/{gid}/receivers/upsertplus": 2,
        "GET /v3/groups/{gid}/receivers": 1,
    }
    assert set(s["faults"]) == {"429_retry_after", "429_plain", "500", "502", "503", "slow", "drop", "token_expiry"}


def test_unknown_route_uses_error_shape(api):
    r = api.get(f"{CR}/v3/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404


# -- faults -----------------------------------------------------------------


NOT_SLOW = ["429_retry_after", "429_plain", "500", "502", "503", "drop", "token_expiry"]


def fault_sequence(client, n: int) -> list[tuple[int, str | None, str | None]]:
    out = []
    for _ in range(n):
        r = client.get(f"{CR}/v3/groups.json")
        out.append((r.status_code, r.headers.get("x-sandbox-fault"), r.headers.get("retry-after")))
    return out


def test_fault_sequence_is_reproducible_with_seed(api):
    runs = []
    for seed in (1234, 1234, 999):
        # A fresh token per run (with faults off) so token_expiry faults of
        # the previous run cannot leak into this one.
        api.post("/_sandbox/faults", json={"fault_rate": 0.0})
        api.headers["Authorization"] = f"Bearer {get_token(api)}"
        # "slow" left out only to keep the test fast; it draws like any kind.
        api.post("/_sandbox/faults", json={"fault_rate": 0.5, "seed": seed, "kinds": NOT_SLOW})
        runs.append(fault_sequence(api, 24))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    kinds = [k for _, k, _ in runs[0] if k]
    assert 0 < len(kinds) < 24


def test_fault_rate_one_gives_429_with_and_without_retry_after(api):
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "seed": 5})
    seen: dict[str, int] = {}
    for _ in range(200):
        r = api.get(f"{CR}/v3/groups.json")
        kind = r.headers.get("x-sandbox-fault")
        assert kind is not None  # rate 1.0: every processor request is faulted
        if r.status_code == 429:
            key = "with" if r.headers.get("retry-after") == "1" else "without"
            seen[key] = seen.get(key, 0) + 1
            assert r.json() == {"error": {"code": 429, "message": "Too Many Requests"}}
        if "with" in seen and "without" in seen:
            break
    assert seen.get("with") and seen.get("without")
    faults = state(api)["faults"]
    assert faults["429_retry_after"] == seen["with"] and faults["429_plain"] == seen["without"]


def test_error_faults_happen_before_handler(api):
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["500", "502", "503"]})
    r = upsert(api, [{"email": "a@example.com"}])
    assert r.status_code in (500, 502, 503) and r.json()["error"]["code"] == r.status_code
    s = state(api)
    assert s["cleverreach"]["groups"]["1001"]["receivers"] == {}
    assert "POST /v3/groups/{gid}/receivers/upsertplus" not in s["cleverreach"]["calls"]
    assert sum(s["faults"].values()) == 1


def test_token_expiry_fault_revokes_callers_token(api):
    api.post("/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["token_expiry"]})
    r = api.get(f"{CR}/v3/groups.json")
    assert r.status_code == 401 and r.json() == UNAUTHORIZED
    api.post("/_sandbox/faults", json={"fault_rate": 0.0})
    assert api.get(f"{CR}/v3/groups.json").status_code == 401  # stays revoked
    assert state(api)["faults"]["token_expiry"] == 1


def test_control_routes_are_never_faulted():
    with TestClient(create_app(fault_rate=1.0, seed=1)) as c:
        for _ in range(20):
            assert c.get("/_sandbox/state").status_code == 200
        assert sum(state(c)["faults"].values()) == 0
        assert c.post("/_sandbox/reset", json={"fault_rate": 0.0}).status_code == 200
        assert c.get(f"{CR}/v3/groups").status_code == 401  # faults off: plain auth failure
        assert c.post("/_sandbox/reset", json={"fault_rate": 2}).status_code == 400


def test_slow_fault_and_latency_delay_processor_requests_only():
    with TestClient(create_app(latency_ms=150)) as c:
        start = time.perf_counter()
        c.get(f"{CR}/v3/groups")
        assert time.perf_counter() - start >= 0.15
        start = time.perf_counter()
        c.get("/_sandbox/state")
        assert time.perf_counter() - start < 0.15
        c.post("/_sandbox/reset", json={"latency_ms": 0, "fault_rate": 1.0, "kinds": ["slow"]})
        start = time.perf_counter()
        r = c.get(f"{CR}/v3/groups")
        assert time.perf_counter() - start >= 0.2
        assert r.status_code == 401 and r.headers["x-sandbox-fault"] == "slow"  # then handled normally


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_drop_fault_processes_request_but_breaks_connection(caplog):
    port = _free_port()
    # log_config=None keeps uvicorn's loggers propagating so caplog sees them.
    config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        token = requests.post(
            f"{base}{CR}/oauth/token.php", auth=CREDS, json={"grant_type": "client_credentials"}, timeout=5
        )
        headers = auth(token.json()["access_token"])
        requests.post(f"{base}/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["drop"]}, timeout=5)
        with caplog.at_level(logging.INFO):
            with pytest.raises((requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
                requests.post(
                    f"{base}{CR}/v3/groups.json/1001/receivers/upsertplus",
                    headers=headers,
                    json=[{"email": "dropped@example.com"}],
                    timeout=5,
                )
        requests.post(f"{base}/_sandbox/faults", json={"fault_rate": 0.0}, timeout=5)
        s = requests.get(f"{base}/_sandbox/state", timeout=5).json()
        assert "dropped@example.com" in s["cleverreach"]["groups"]["1001"]["receivers"]  # processed anyway
        assert s["faults"]["drop"] == 1
        assert not [r for r in caplog.records if "without completing" in r.getMessage()]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
