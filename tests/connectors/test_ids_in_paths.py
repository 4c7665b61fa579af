"""Issue 14: every id or address a connector puts in a path reaches the wire percent-encoded.

An e-mail address may hold ``#``, ``?``, ``/`` and ``%`` in its local part (RFC 5322); pasted
into a path unencoded it ends the path, starts a query or adds a segment, the call reaches
another resource, and a delete answered 404 reads as "already gone". Every connector method
that puts an id in a path is driven here with an id holding all of them plus ``@`` and a
space, and the exact URL that went out is compared with a hand-encoded one. One round trip
goes over real HTTP to the sandbox. A guard below finds every ``path(...)`` call with a
non-constant segment in ``connectors/`` and fails when this table does not drive it.
"""

from __future__ import annotations

import ast
import doctest
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import responses

from connectors.amend import Holder
from connectors.cleverreach import AMENDER as CR_AMENDER
from connectors.cleverreach import CleverReach
from connectors.flexperto import AMENDER as FX_AMENDER
from connectors.flexperto import Flexperto
from connectors.isic import Isic
from connectors.nect import Nect
from connectors.timify import Timify
from connectors.transport import EncodedPath, HttpClient, RetryPolicy, path, redact
from core.settings import CleverReachSettings
from psync.sandbox_env import CREDENTIAL_ID, CREDENTIAL_SECRET, TIMIFY_COMPANY_ID
from sandbox import common as sandbox_common

# Every character that changes a URL's meaning unencoded, in one id.
ODD = "x/y#z?w%v @example.de"
ODD_WIRE = "x%2Fy%23z%3Fw%25v%20%40example.de"  # by hand, not by the code under test
# In a query string requests encodes the space as "+".
ODD_QUERY = "x%2Fy%23z%3Fw%25v+%40example.de"
# An address intake accepts (email-validator): no space, but "/", "#", "?" and "%".
ADDRESS = "erika/ops#1?x%y@example.de"
ADDRESS_WIRE = "erika%2Fops%231%3Fx%25y%40example.de"

ROOT = "https://processor.test"
POLICY = RetryPolicy(max_attempts=1)
START = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)


def serve(answers: list[tuple[int, Any]], token_path: str, token_body: dict) -> None:
    """Answer every call under ROOT: the token endpoint with `token_body`, every other call
    with the next of `answers`, in order. What is asserted is the URL, not the routing."""
    queue = list(answers)

    def reply(request: requests.PreparedRequest):
        if request.path_url == token_path:
            return 200, {}, json.dumps(token_body)
        status, body = queue.pop(0)
        return status, {"Content-Type": "application/json"}, "" if body is None else json.dumps(body)

    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        responses.add_callback(method, re.compile(re.escape(ROOT) + r"/.*"), callback=reply)


def cleverreach(answers):
    serve(answers, "/oauth/token.php", {"access_token": "T", "expires_in": 3600})
    return CleverReach.connect(ROOT, "id", "secret", policy=POLICY)


def timify(answers):
    serve(answers, "/v1/auth/token", {"accessToken": "T", "expires": 3600})
    return Timify.connect(ROOT, "app", "secret", "65aea871f011c03363aefdb3", policy=POLICY)


def flexperto(answers):
    serve(answers, "/api/v2/oauth/token", {"access_token": "T", "expires_in": 3600})
    return Flexperto.connect(ROOT, "id", "secret", policy=POLICY)


def nect(answers):
    serve(answers, "/none", {})
    return Nect.connect(ROOT, "key", policy=POLICY)


def isic(answers):
    serve(answers, "/auth/token", {"accessToken": "T", "tokenType": "Bearer", "expiresIn": 300})
    return Isic.connect(ROOT, "id", "secret", policy=POLICY)


def _held(processor: str, purpose: str) -> Holder:
    """A record known by the processor's own id ODD, in group ODD (CleverReach)."""
    settings = SimpleNamespace(cleverreach=CleverReachSettings(group_newsletter=ODD))
    return Holder(processor, purpose, ODD, uuid.UUID(int=1), "ab" * 16, None, settings=settings)


def ok(data: Any) -> tuple[int, Any]:
    return 200, {"data": data, "status": 1}  # TIMIFY's envelope


APPOINTMENT = dict(service_id="s1", resource_ids=["r1"], start=START, duration_min=30, customer_id="c1")


@dataclass(frozen=True)
class Case:
    name: str
    connect: Callable[[list], Any]
    answers: list[tuple[int, Any]]
    call: Callable[[Any], Any]
    result: Any
    wire: list[tuple[str, str]]  # (method, path and query) after the token call
    covers: tuple[str, ...]  # the functions (module.function) that build these paths


W = ODD_WIRE
CASES = [
    # CleverReach: the group id and the address are both path segments.
    Case(
        "cleverreach.upsert",
        cleverreach,
        [(200, [{"id": "1"}])],
        lambda c: c.upsert(ODD, "newsletter", [{"email": "a@example.de"}]),
        [{"id": "1"}],
        [("POST", f"/v3/groups.json/{W}/receivers/upsertplus")],
        ("cleverreach.upsert",),
    ),
    Case(
        "cleverreach.get_receiver",
        cleverreach,
        [(200, {"id": "1", "email": ODD})],
        lambda c: c.get_receiver(ODD, ODD),
        {"id": "1", "email": ODD},
        [("GET", f"/v3/groups.json/{W}/receivers/{W}")],
        ("cleverreach.get_receiver",),
    ),
    Case(
        "cleverreach.get_receiver absent",
        cleverreach,
        [(404, {})],
        lambda c: c.get_receiver("7", ODD),
        None,
        [("GET", f"/v3/groups.json/7/receivers/{W}")],
        ("cleverreach.get_receiver",),
    ),
    Case(
        "cleverreach.iter_receivers",
        cleverreach,
        [(200, [])],
        lambda c: list(c.iter_receivers(ODD)),
        [],
        [("GET", f"/v3/groups.json/{W}/receivers?page=0&pagesize=500&type=all")],
        ("cleverreach.iter_receivers",),
    ),
    Case(
        "cleverreach.deactivate",
        cleverreach,
        [(200, True)],
        lambda c: c.deactivate(ODD, ODD),
        True,
        [("PUT", f"/v3/groups.json/{W}/receivers/{W}/deactivate")],
        ("cleverreach.deactivate",),
    ),
    Case(
        "cleverreach.delete",
        cleverreach,
        [(200, True)],
        lambda c: c.delete(ODD, ODD),
        True,
        [("DELETE", f"/v3/groups.json/{W}/receivers/{W}")],
        ("cleverreach.delete",),
    ),
    # TIMIFY: our external ids and TIMIFY's ids, by id and by ?external=1.
    Case(
        "timify.get_customer",
        timify,
        [ok({"id": "c1"})],
        lambda t: t.get_customer(ODD),
        {"id": "c1"},
        [("GET", f"/v1/customers/{W}")],
        ("timify._get",),
    ),
    Case(
        "timify.get_customer external",
        timify,
        [(404, {})],
        lambda t: t.get_customer(ODD, external=True),
        None,
        [("GET", f"/v1/customers/{W}?external=1")],
        ("timify._get",),
    ),
    Case(
        "timify.upsert_customer update",
        timify,
        [ok({"id": "c1"})],
        lambda t: t.upsert_customer("p-1", {}, customer_id=ODD),
        "c1",
        [("PATCH", f"/v1/customers/{W}")],
        ("timify._upsert",),
    ),
    Case(
        "timify.upsert_customer exists",
        timify,
        [(409, {}), ok({"id": "c1"})],
        lambda t: t.upsert_customer(ODD, {}),
        "c1",
        [("POST", "/v1/customers"), ("PATCH", f"/v1/customers/{W}?external=1")],
        ("timify.find",),  # _upsert's lookup by our id, after the 409
    ),
    Case(
        "timify.delete_customer",
        timify,
        [ok({"id": "c1"})],
        lambda t: t.delete_customer(ODD),
        True,
        [("DELETE", f"/v1/customers/{W}")],
        ("timify.delete_customer",),
    ),
    Case(
        "timify.delete_customer external",
        timify,
        [(404, {})],
        lambda t: t.delete_customer(ODD, external=True),
        False,
        [("DELETE", f"/v1/customers/{W}?external=1")],
        ("timify.delete_customer",),
    ),
    Case(
        "timify.get_appointment external",
        timify,
        [ok({"id": "a1"})],
        lambda t: t.get_appointment(ODD, external=True),
        {"id": "a1"},
        [("GET", f"/v1/appointments/{W}?external=1")],
        ("timify._get",),
    ),
    Case(
        "timify.upsert_appointment update",
        timify,
        [ok({"id": "a1"})],
        lambda t: t.upsert_appointment("b-1", appointment_id=ODD, **APPOINTMENT),
        "a1",
        [("PATCH", f"/v1/appointments/{W}")],
        ("timify._upsert",),
    ),
    Case(
        "timify.upsert_appointment exists",
        timify,
        [(409, {}), ok({"id": "a1"})],
        lambda t: t.upsert_appointment(ODD, **APPOINTMENT),
        "a1",
        [("POST", "/v1/appointments"), ("PATCH", f"/v1/appointments/{W}?external=1")],
        ("timify._upsert",),
    ),
    # Flexperto: ids in the path, and in the query of the lookups.
    Case(
        "flexperto.get_customer",
        flexperto,
        [(200, {"id": ODD})],
        lambda f: f.get_customer(ODD),
        {"id": ODD},
        [("GET", f"/api/v2/customers/{W}")],
        ("flexperto.get_customer",),
    ),
    Case(
        "flexperto.delete_customer",
        flexperto,
        [(204, None)],
        lambda f: f.delete_customer(ODD),
        True,
        [("DELETE", f"/api/v2/customers/{W}")],
        ("flexperto.delete_customer",),
    ),
    Case(
        "flexperto.delete_archive",
        flexperto,
        [(404, {})],
        lambda f: f.delete_archive(ODD),
        False,
        [("DELETE", f"/api/v2/archives/{W}")],
        ("flexperto.delete_archive",),
    ),
    Case(
        "flexperto.find_customer",
        flexperto,
        [(200, {"items": [{"id": 7, "external_id": ODD}]})],
        lambda f: f.find_customer(ODD),
        {"id": 7, "external_id": ODD},
        [("GET", f"/api/v2/customers?external_id={ODD_QUERY}")],
        (),
    ),
    Case(
        "flexperto.purge",
        flexperto,
        [
            (200, {"items": [{"id": ODD, "customer_id": ODD}]}),
            (204, None),
            (204, None),
            (404, {}),
            (200, {"items": []}),
        ],
        lambda f: f.purge(ODD),
        True,
        [
            ("GET", f"/api/v2/archives?customer_id={ODD_QUERY}"),
            ("DELETE", f"/api/v2/archives/{W}"),
            ("DELETE", f"/api/v2/customers/{W}"),
            ("GET", f"/api/v2/customers/{W}"),
            ("GET", f"/api/v2/archives?customer_id={ODD_QUERY}"),
        ],
        ("flexperto.delete_archive", "flexperto.delete_customer", "flexperto.get_customer"),
    ),
    # Nect: the case uuid is Nect's, but it is still only ever a segment.
    Case(
        "nect.get_case",
        nect,
        [(200, {"caseUuid": ODD, "status": "created"})],
        lambda n: n.get_case(ODD),
        {"caseUuid": ODD, "status": "created"},
        [("GET", f"/v1/cases/{W}")],
        ("nect.get_case",),
    ),
    Case(
        "nect.delete_case",
        nect,
        [(202, {"caseUuid": ODD, "status": "deletion_pending"})],
        lambda n: n.delete_case(ODD),
        "pending",
        [("DELETE", f"/v1/cases/{W}")],
        ("nect.delete_case",),
    ),
    Case(
        "nect.deletion_verified",
        nect,
        [(404, {})],
        lambda n: n.deletion_verified(ODD),
        True,
        [("GET", f"/v1/cases/{W}")],
        ("nect.get_case",),
    ),
    # ISIC: every call is POST /{call}; the cardholder id travels in the body, never the path.
    Case(
        "isic.get_cardholder",
        isic,
        [(404, {})],
        lambda i: i.get_cardholder(ODD),
        None,
        [("POST", "/cardholders.get")],
        (),
    ),
    Case(
        "isic.delete_cardholder",
        isic,
        [(202, {"status": "pending"})],
        lambda i: i.delete_cardholder(ODD),
        "pending",
        [("POST", "/cardholders.delete")],
        (),
    ),
    Case("isic.cards", isic, [(200, {"cards": []})], lambda i: i.cards(ODD), [], [("POST", "/cards.list")], ()),
    # The amenders (rectification, restriction): the receiver's or customer's id in the path.
    Case(
        "cleverreach amender update",
        cleverreach,
        [(200, {"id": ODD, "email": "a@example.de"}), (200, {"id": ODD})],
        lambda c: CR_AMENDER.update(c, _held("cleverreach", "consent:newsletter"), {"first_name": "A"}),
        None,
        [("GET", f"/v3/groups.json/{W}/receivers/{W}"), ("PUT", f"/v3/groups.json/{W}/receivers/{W}")],
        ("cleverreach.update",),
    ),
    Case(
        "cleverreach amender reactivate",
        cleverreach,
        [
            (200, {"id": ODD, "activated": 5, "active": False}),
            (200, True),
            (200, {"id": ODD, "activated": 5, "active": True}),
        ],
        lambda c: CR_AMENDER.reactivate(c, _held("cleverreach", "consent:newsletter")),
        True,
        [
            ("GET", f"/v3/groups.json/{W}/receivers/{W}"),
            ("PUT", f"/v3/groups.json/{W}/receivers/{W}/activate"),
            ("GET", f"/v3/groups.json/{W}/receivers/{W}"),
        ],
        ("cleverreach.reactivate",),
    ),
    Case(
        "flexperto amender update",
        flexperto,
        [(200, {"id": ODD, "email": "a@example.de"}), (200, {"id": ODD})],
        lambda f: FX_AMENDER.update(f, _held("flexperto", "video:B-1"), {"email": "b@example.de"}),
        None,
        [("GET", f"/api/v2/customers/{W}"), ("PATCH", f"/api/v2/customers/{W}")],
        ("flexperto.update",),
    ),
]


def sent_after_token() -> list[tuple[str, str]]:
    token_paths = {"/oauth/token.php", "/v1/auth/token", "/api/v2/oauth/token", "/auth/token"}
    return [(c.request.method, c.request.path_url) for c in responses.calls if c.request.path_url not in token_paths]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@responses.activate
def test_every_id_reaches_the_wire_as_one_encoded_segment(case):
    connector = case.connect(case.answers)
    assert case.call(connector) == case.result
    assert sent_after_token() == case.wire
    for call in responses.calls:  # the whole URL as requests sent it, not only the path
        assert call.request.url.startswith(ROOT + "/")
        assert " " not in call.request.url and "#" not in call.request.url and "@" not in call.request.url
    if case.connect is isic:  # the id went in the body
        assert json.loads(responses.calls[-1].request.body)["cardholderId"] == ODD


def _builds_paths_from_values() -> set[str]:
    """Every connector function that calls ``path(...)`` with a segment that is not a literal."""
    found = set()
    for source in sorted(Path(__file__).parents[2].joinpath("connectors").glob("*.py")):
        tree = ast.parse(source.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "path"
                    and not all(isinstance(arg, ast.Constant) for arg in node.args)
                ):
                    found.add(f"{source.stem}.{function.name}")
    return found


def test_the_table_drives_every_function_that_puts_a_value_in_a_path():
    driven = {name for case in CASES for name in case.covers}
    # timify._upsert also passes `kind` ("customers", "appointments"): driven with both.
    assert _builds_paths_from_values() == driven


def test_every_request_of_every_connector_goes_through_path():
    """No connector hands `request` anything but ``path(...)`` or a parameter holding one."""
    for source in sorted(Path(__file__).parents[2].joinpath("connectors").glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "request":
                where = node.args[2] if len(node.args) > 2 else None
                if where is None or source.stem == "transport":
                    continue
                is_path = isinstance(where, ast.Call) and getattr(where.func, "id", None) == "path"
                assert is_path or isinstance(where, ast.Name), f"{source.name}:{node.lineno}"


# the one place: transport.path and HttpClient.request ---------------------------------
@pytest.mark.parametrize(
    ("segments", "wire"),
    [
        (("groups.json", 7, "receivers", ODD), f"/groups.json/7/receivers/{ODD_WIRE}"),
        (("receivers", ADDRESS), f"/receivers/{ADDRESS_WIRE}"),
        (("v1", "customers", "ä b"), "/v1/customers/%C3%A4%20b"),  # UTF-8, then encoded
        (("v1", "customers", "%2F"), "/v1/customers/%252F"),  # an encoded-looking id stays an id
        (("v1", "cases", "a.b~c_d-e"), "/v1/cases/a.b~c_d-e"),  # unreserved: as is
    ],
)
def test_path_encodes_each_segment_on_its_own(segments, wire):
    assert path(*segments) == wire
    assert isinstance(path(*segments), EncodedPath)


@pytest.mark.parametrize("bad", ["", ".", ".."])
def test_a_segment_url_normalisation_would_drop_or_climb_is_refused(bad):
    with pytest.raises(ValueError, match="may not be empty"):
        path("v1", "customers", bad)


@pytest.mark.parametrize("bad", [None, True, 1.5, b"x"])
def test_a_segment_that_is_not_text_or_a_number_is_refused(bad):
    with pytest.raises(TypeError):
        path("v1", bad)


@responses.activate
def test_a_path_pasted_together_is_refused_before_anything_is_sent():
    http = HttpClient("proc", ROOT, policy=POLICY)
    base = path("receivers")
    for pasted in (f"/receivers/{ADDRESS}", base + "/" + ADDRESS, f"{base}/{ADDRESS}", "/groups.json"):
        with pytest.raises(TypeError) as info:
            http.request("receivers.get", "GET", pasted)
        assert "erika" not in str(info.value) and "example" not in str(info.value)
    assert len(responses.calls) == 0 and http.drain_calls() == []


def test_the_sandbox_counts_a_route_that_takes_slashes_under_its_plain_template():
    assert doctest.testmod(sandbox_common).failed == 0


def test_redaction_blanks_an_encoded_address_in_a_logged_path():
    line = f'"DELETE /v3/groups.json/1001/receivers/{ADDRESS_WIRE} HTTP/1.1" 200 4'
    assert redact(line) == '"DELETE /v3/groups.json/1001/receivers/[email] HTTP/1.1" 200 4'
    query = f"GET /api/v2/customers?external_id={ODD_QUERY}&page=1"
    assert "example" not in redact(query) and "%40" not in redact(query)
    assert redact(f"/receivers/{ADDRESS}") == "/receivers/erika/[email]"  # raw: the part after "/"


# one round trip over real HTTP ---------------------------------------------------------
@pytest.mark.parametrize(("address", "wire"), [(ADDRESS, ADDRESS_WIRE), (ODD, ODD_WIRE)])
def test_cleverreach_receiver_get_and_delete_round_trip_against_the_sandbox(sandbox, caplog, address, wire):
    caplog.set_level(logging.DEBUG, logger="urllib3.connectionpool")
    cr = CleverReach.connect(f"{sandbox}/cleverreach", CREDENTIAL_ID, CREDENTIAL_SECRET)
    bystander = "erika@example.de"  # a receiver the wrong path could hit instead
    cr.upsert("1001", "newsletter", [{"email": address, "activated": 1}, {"email": bystander, "activated": 1}])

    assert cr.get_receiver("1001", address)["email"] == address.lower()
    assert cr.deactivate("1001", address) is True
    assert cr.get_receiver("1001", address)["active"] is False
    assert cr.delete("1001", address) is True
    assert cr.get_receiver("1001", address) is None  # gone, read back
    assert cr.delete("1001", address) is False  # and a second delete says so
    assert cr.get_receiver("1001", bystander)["active"] is True  # nobody else touched

    log = requests.get(f"{sandbox}/_sandbox/requests", timeout=5).json()["requests"]
    receiver_calls = [
        (e["method"], e["raw_path"], e["query"]) for e in log if "/receivers/" in e["path"] and e["method"] != "POST"
    ]
    one = f"/cleverreach/v3/groups.json/1001/receivers/{wire}"
    assert receiver_calls[:6] == [
        ("GET", one, ""),
        ("PUT", one + "/deactivate", ""),
        ("GET", one, ""),
        ("DELETE", one, ""),
        ("GET", one, ""),
        ("DELETE", one, ""),
    ]
    # urllib3 logged every request line, and the address in none of them.
    lines = [record.getMessage() for record in caplog.records if record.name == "urllib3.connectionpool"]
    assert sum("[email]" in line for line in lines) >= 6
    for fragment in ("erika", "example.de", "%40", "@"):
        assert not any(fragment in line for line in lines), fragment


def test_timify_external_id_round_trip_against_the_sandbox(sandbox):
    """Our own ids travel as ``/v1/customers/{id}?external=1``: one with every odd character
    is found, deleted and read back as gone."""
    tm = Timify.connect(f"{sandbox}/timify", CREDENTIAL_ID, CREDENTIAL_SECRET, TIMIFY_COMPANY_ID)
    created = tm.upsert_customer(ODD, {})
    assert tm.get_customer(ODD, external=True)["id"] == created
    assert tm.delete_customer(ODD, external=True) is True
    assert tm.get_customer(ODD, external=True) is None
    assert tm.get_customer(created) is None


def test_redaction_keeps_an_operation_named_token_and_blanks_the_tokens():
    assert redact("cleverreach oauth.token: connection failed") == "cleverreach oauth.token: connection failed"
    assert redact('{"access_token":"a1b2c3d4e5f6"}') == '{"access_token":"[redacted]"}'
    assert redact("token=Zm9vYmFyYmF6") == "token=[redacted]"
