"""``transport.send``: the request ``Session.request`` would send, and its answer, for less.

Each case sends the same call both ways through an adapter that records what reaches it,
and compares the prepared requests and the adapter's options; then what the caller gets
back (redirects, hooks, cookies) against a real answer (``responses``)."""

from __future__ import annotations

import pytest
import requests
import responses
from requests.adapters import HTTPAdapter

from connectors.transport import (
    HttpClient,
    RetryPolicy,
    TokenAuth,
    environment_resolved_session,
    make_session,
    path,
    send,
)

BASE = "https://api.test"


class Recording(HTTPAdapter):
    """Answers 200 ``{}`` to everything; keeps each prepared request and the send options."""

    def __init__(self):
        super().__init__()
        self.sent: list[tuple[requests.PreparedRequest, dict]] = []

    def send(self, request, **kwargs):
        self.sent.append((request, kwargs))
        response = requests.Response()
        response.status_code, response._content, response.request, response.url = 200, b"{}", request, request.url
        return response


def _seen(session: requests.Session, how, **kwargs) -> tuple[tuple, dict]:
    adapter = Recording()
    session.mount("https://", adapter)
    how(session, **kwargs)
    request, options = adapter.sent[-1]
    return (request.method, request.url, dict(request.headers), request.body), options


def _both(session: requests.Session, method: str, url: str, **kwargs):
    ours = _seen(session, lambda s, **kw: send(s, method, url, (1.0, 2.0), **kw), **kwargs)
    theirs = _seen(session, lambda s, **kw: s.request(method, url, timeout=(1.0, 2.0), **kw), **kwargs)
    return ours, theirs


CALLS = [
    {},
    {"json": {"externalId": "B-1", "notes": "ä"}},
    {"params": {"external": 1}, "json": {"a": [1, 2]}},
    {"headers": {"company-id": "c-1"}, "json": {}},
    {"headers": {"User-Agent": None, "X-Extra": "1"}},  # None removes a session header
    {"data": {"grant_type": "client_credentials"}, "auth": ("id", "secret")},
    {"data": b"raw", "headers": {"content-type": "text/plain"}},
    {"files": {"f": ("a.csv", b"x,y\n")}},
]


@pytest.mark.parametrize("kwargs", CALLS, ids=range(len(CALLS)))
@pytest.mark.parametrize("method", ["GET", "post", "DELETE"])
def test_the_same_request_and_options_as_session_request(kwargs, method):
    session = environment_resolved_session(BASE)
    session.headers["company-id"] = "from-session"
    ours, theirs = _both(session, method, f"{BASE}/v1/customers/a%40b.de", **kwargs)
    if "files" in kwargs:  # a new multipart boundary each time: the request line and the options
        ours, theirs = (ours[0][:2], ours[1]), (theirs[0][:2], theirs[1])
    assert ours == theirs


def test_session_params_auth_and_env_settings_are_merged_as_requests_does(monkeypatch, tmp_path):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    (tmp_path / "netrc").write_text("machine api.test login user password secret\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    session = make_session()  # trust_env: the environment is read per call
    session.params = {"lang": "de"}
    ours, theirs = _both(session, "GET", f"{BASE}/x", params={"page": 2})
    assert ours == theirs
    assert ours[1]["proxies"]["https"] == "http://proxy.test:3128" and ours[1]["verify"] == str(tmp_path / "ca.pem")
    assert ours[0][2]["Authorization"].startswith("Basic ")  # from the netrc file

    session.auth = ("a", "b")  # the session's auth wins over netrc, a call's over both
    for call in ({}, {"auth": ("c", "d")}):
        ours, theirs = _both(session, "GET", f"{BASE}/x", **call)
        assert ours == theirs
        assert ours[0][2]["Authorization"] == requests.auth._basic_auth_str(*call.get("auth", ("a", "b")))


def test_a_keyword_it_does_not_prepare_goes_to_session_request():
    session = environment_resolved_session(BASE)
    ours, theirs = _both(session, "GET", f"{BASE}/x", allow_redirects=False, stream=True)
    assert ours == theirs and ours[1]["stream"] is True


@responses.activate
def test_redirects_are_followed():
    responses.get(f"{BASE}/old", status=301, headers={"Location": f"{BASE}/new"})
    responses.get(f"{BASE}/new", json={"ok": True})
    response = send(environment_resolved_session(BASE), "GET", f"{BASE}/old", 5.0)
    assert response.json() == {"ok": True} and response.url == f"{BASE}/new"
    assert [r.status_code for r in response.history] == [301]


@responses.activate
def test_cookies_are_kept_and_sent_back():
    responses.get(f"{BASE}/login", headers={"Set-Cookie": "affinity=node-2; Path=/"})
    responses.get(f"{BASE}/next")
    session = environment_resolved_session(BASE)
    send(session, "GET", f"{BASE}/login", 5.0)
    assert session.cookies.get("affinity") == "node-2"
    send(session, "GET", f"{BASE}/next", 5.0)
    assert responses.calls[1].request.headers["Cookie"] == "affinity=node-2"


@responses.activate
def test_a_refused_token_is_renewed_through_the_response_hook():
    tokens = iter(["old", "new"])
    auth = TokenAuth(lambda: (next(tokens), 3600.0))
    responses.get(f"{BASE}/x", status=401)
    responses.get(f"{BASE}/x", json={"ok": True})
    client = HttpClient("proc", BASE, auth=auth, session=environment_resolved_session(BASE), policy=RetryPolicy())
    assert client.request("x.get", "GET", path("x")).json() == {"ok": True}
    assert [c.request.headers["Authorization"] for c in responses.calls] == ["Bearer old", "Bearer new"]


def test_the_adapter_keeps_an_origins_pool_while_it_lives():
    session = make_session()
    adapter = session.get_adapter(BASE)

    def pool(url, verify=True, proxies=None):
        request = requests.Request("GET", url).prepare()
        return adapter.get_connection_with_tls_context(request, verify, proxies=proxies)

    first = pool(f"{BASE}/v1/customers/a%40b.de")
    assert pool(f"{BASE}/v1/appointments?external=1") is first  # same origin, same pool
    assert pool("https://other.test/v1") is not first
    assert pool(f"{BASE}/x", verify=False) is not first  # other TLS settings, another pool
    proxied = pool(f"{BASE}/x", proxies={"https": "http://proxy.test:3128"})
    assert proxied is not first  # through a proxy: HTTPAdapter's own lookup
    session.close()
    assert pool(f"{BASE}/x") is not first


@pytest.mark.parametrize(
    "base", [BASE, f"{BASE}/v3", "https://API.test/Timify", "https://bücher.test/api", "https://api.test:8443/x y"]
)
@pytest.mark.parametrize(
    "segments",
    [("customers",), ("groups.json", 7, "receivers", "a/b#c?d%e f@example.de"), ("v1", "ä ö", "~_.-", "%41")],
)
def test_a_client_sends_the_url_requests_would_prepare(base, segments):
    session = environment_resolved_session(BASE)
    adapter = Recording()
    session.mount("https://", adapter)
    client = HttpClient("proc", base, session=session, policy=RetryPolicy(max_attempts=1))
    for params in (None, {"external": 1}):
        client.request("x.get", "GET", path(*segments), params=params)
        expected = requests.Request("GET", client.base_url + path(*segments), params=params).prepare().url
        assert adapter.sent[-1][0].url == expected
    # Only a base URL that preparation leaves as it is skips it.
    assert client._base_prepared() is (base in (BASE, f"{BASE}/v3"))
