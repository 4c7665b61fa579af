"""The plumbing the imitated processors share (``sandbox.common``)."""

from __future__ import annotations

import base64
from functools import partial

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from sandbox import common
from sandbox.common import (
    Processor,
    TokenStore,
    basic_credentials,
    bearer_token,
    bump,
    form_or_json,
    json_body,
    query_int,
)
from sandbox.errors import ApiError, StringCodeError


def test_token_store_issues_validates_and_revokes():
    store = TokenStore()
    a, b = store.issue(60), store.issue(60)
    assert a != b and store.valid(a) and store.valid(b) and store.issued == 2
    store.revoke(a)
    store.revoke("unknown")
    assert not store.valid(a) and store.valid(b)
    assert store.revoke_all() == 1 and not store.valid(b)
    assert store.revoke_all() == 0 and store.issued == 2


def test_token_store_forgets_expired_tokens(monkeypatch):
    store = TokenStore()
    token = store.issue(10)
    monkeypatch.setattr(common.time, "time", lambda: store.expiry[token])
    assert not store.valid(token) and token not in store.expiry
    assert store.revoke_all() == 0  # an expired token is not counted as live


def test_bump_counts_per_key():
    counts: dict[str, int] = {}
    bump(counts, "a")
    bump(counts, "a")
    bump(counts, "b")
    assert counts == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    ("header", "strict", "raw"),
    [
        (None, None, None),
        ("", None, None),
        ("Bearer abc", "abc", "abc"),
        ("bearer  abc ", "abc", "abc"),
        ("Bearer", None, None),
        ("Bearer   ", None, None),
        ("Basic abc", None, "Basic abc"),
        ("abc", None, "abc"),
        ("  abc  ", None, "abc"),
        ("  Bearer abc", None, "abc"),
    ],
)
def test_bearer_token_strict_and_raw(header, strict, raw):
    assert bearer_token(header) == strict
    assert bearer_token(header, raw=True) == raw


def test_basic_credentials():
    encode = lambda s: "Basic " + base64.b64encode(s).decode()  # noqa: E731 - a one-line helper local to the test
    assert basic_credentials(encode(b"id:se:cret")) == ("id", "se:cret")
    assert basic_credentials(encode(b"no-colon")) == (None, None)
    assert basic_credentials(encode(b"\xff:x")) == (None, None)
    assert basic_credentials("Basic !!!") == (None, None)
    assert basic_credentials("Bearer abc") == (None, None)
    assert basic_credentials(None) == (None, None)


def test_form_or_json():
    form = "application/x-www-form-urlencoded"
    assert form_or_json(b"", form) == {} and form_or_json(b"", "application/json") == {}
    assert form_or_json(b"a=1&a=2&b=", form) == {"a": "1"}
    assert form_or_json(b'{"a": 1}', "application/json") == {"a": 1}
    assert form_or_json(b"[1]", "") == {}
    for raw, content_type in [(b"{", "application/json"), (b"\xff", form)]:
        with pytest.raises(ValueError):
            form_or_json(raw, content_type)


def _echo_app(bad_request) -> TestClient:
    app = FastAPI()

    @app.exception_handler(ApiError)
    async def render(request: Request, exc: ApiError):
        return exc.response()

    @app.post("/echo")
    async def echo(request: Request):
        return {"body": await json_body(request, bad_request), "n": query_int(request, "n", 7, bad_request)}

    return TestClient(app)


def test_json_body_and_query_int_raise_the_callers_bad_request():
    client = _echo_app(partial(StringCodeError, 400))
    assert client.post("/echo").json() == {"body": None, "n": 7}
    assert client.post("/echo?n=", content=b"[1]").json() == {"body": [1], "n": 7}
    assert client.post("/echo?n=3", content=b"null").json() == {"body": None, "n": 3}
    r = client.post("/echo", content=b"{")
    assert (r.status_code, r.json()) == (
        400,
        {"error": {"code": "invalid_request", "message": "body is not valid JSON"}},
    )
    r = client.post("/echo?n=x")
    assert r.json() == {"error": {"code": "invalid_request", "message": "n must be an integer"}}
    plain = _echo_app(partial(ApiError, 400)).post("/echo", content=b"{")
    assert plain.json() == {"error": {"code": 400, "message": "body is not valid JSON"}}


class _State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: dict[str, int] = {}
        self.tokens = TokenStore()

    def snapshot(self) -> dict:
        return {"calls": self.calls, "tokens": self.tokens.issued}


class _Toy(Processor):
    name = "toy"
    prefix = "/toy"

    def __init__(self) -> None:
        super().__init__(_State())

    def _register_api(self) -> None:
        async def token(request: Request) -> object:
            """A token."""
            return {"token": self.state.tokens.issue(60)}

        async def fail(request: Request) -> object:
            raise StringCodeError(409, "taken")

        async def gone(request: Request) -> object:
            return {"ignored": True}

        async def ping(request: Request) -> object:
            return request.path_params["x"]

        self._route("POST", "/token", token, auth=False)
        self._route("POST", "/things", fail)
        self._route("DELETE", "/things/{id}", gone, status=204)
        self._route("GET", "/v/{x}", ping, auth=False, paths=["/v/{x}", "/v.json/{x}"])

    def _register_control(self) -> None:
        self._add_expire_tokens()


def test_route_wrapper_authenticates_counts_renders_and_expires():
    toy = _Toy()
    app = FastAPI()
    app.include_router(toy.api, prefix=toy.prefix)
    app.include_router(toy.control, prefix="/_sandbox/toy")
    client = TestClient(app)

    r = client.post("/toy/things")
    assert (r.status_code, r.json()) == (401, {"error": {"code": 401, "message": "token expired or invalid"}})
    assert toy.snapshot()["calls"] == {}  # refused calls are not counted

    auth = {"authorization": "Bearer " + client.post("/toy/token").json()["token"]}
    r = client.post("/toy/things", headers=auth)
    assert (r.status_code, r.json()) == (409, {"error": {"code": "conflict", "message": "taken"}})
    r = client.delete("/toy/things/1", headers=auth)
    assert (r.status_code, r.content) == (204, b"")
    assert client.get("/toy/v/1").json() == "1" and client.get("/toy/v.json/2").json() == "2"
    assert toy.snapshot()["calls"] == {
        "POST /token": 1,
        "POST /things": 1,
        "DELETE /things/{id}": 1,
        "GET /v/{x}": 2,
    }

    toy.revoke_request_token(auth)
    assert client.post("/toy/things", headers=auth).status_code == 401
    client.post("/toy/token")
    assert client.post("/_sandbox/toy/expire-tokens").json() == {"revoked": 1}
    toy.reset()
    assert toy.snapshot() == {"calls": {}, "tokens": 0}
