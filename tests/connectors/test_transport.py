"""The HTTP layer: retry policy, error kinds, token auth, rate limit, redaction."""

from __future__ import annotations

import doctest
import pickle
import threading

import cloudpickle
import pytest
import requests
import responses
from prefect.states import format_exception

import connectors.transport
from connectors.transport import (
    FatalError,
    HttpClient,
    RateLimiter,
    RetriableError,
    RetryPolicy,
    TokenAuth,
    path,
    processor_limiter,
    redact,
)

BASE = "https://api.test"
POLICY = RetryPolicy(max_attempts=4, retry_after_cap=60, backoff_initial=0.5)


def client(**kw) -> HttpClient:
    return HttpClient("proc", BASE, policy=kw.pop("policy", POLICY), **kw)


@responses.activate
def test_429_with_retry_after_waits_that_long(no_sleep):
    responses.get(f"{BASE}/x", status=429, headers={"Retry-After": "7"})
    responses.get(f"{BASE}/x", json={"ok": True})
    c = client()
    assert c.request("x.get", "GET", path("x")).json() == {"ok": True}
    assert len(responses.calls) == 2
    assert no_sleep == [7.0]
    assert c.drain_calls()[0].attempts == 2


@responses.activate
def test_retry_after_is_capped(no_sleep):
    responses.get(f"{BASE}/x", status=429, headers={"Retry-After": "3600"})
    responses.get(f"{BASE}/x", status=200)
    client().request("x.get", "GET", path("x"))
    assert no_sleep == [60.0]


@responses.activate
def test_429_without_retry_after_backs_off_with_jitter(no_sleep):
    for _ in range(3):
        responses.get(f"{BASE}/x", status=429)
    responses.get(f"{BASE}/x", status=200)
    client().request("x.get", "GET", path("x"))
    assert len(responses.calls) == 4
    # full jitter: each wait lies within the exponential ceiling 0.5, 1, 2
    assert [w <= c for w, c in zip(no_sleep, [0.5, 1.0, 2.0], strict=True)] == [True] * 3


@responses.activate
def test_5xx_is_retried_until_success(no_sleep):
    responses.get(f"{BASE}/x", status=502)
    responses.get(f"{BASE}/x", status=503)
    responses.get(f"{BASE}/x", status=200)
    c = client()
    c.request("x.get", "GET", path("x"))
    assert len(responses.calls) == 3
    assert c.drain_calls()[0].attempts == 3


@responses.activate
def test_attempts_are_bounded(no_sleep):
    responses.get(f"{BASE}/x", status=500)
    c = client()
    with pytest.raises(RetriableError) as info:
        c.request("x.get", "GET", path("x"))
    assert len(responses.calls) == POLICY.max_attempts
    assert info.value.attempts == POLICY.max_attempts
    assert info.value.status == 500
    assert c.drain_calls()[0].outcome == "retriable"


@responses.activate
def test_timeout_and_connection_error_are_retried(no_sleep):
    responses.get(f"{BASE}/x", body=requests.exceptions.ReadTimeout())
    responses.get(f"{BASE}/x", body=requests.exceptions.ConnectionError())
    responses.get(f"{BASE}/x", status=200)
    client().request("x.get", "GET", path("x"))
    assert len(responses.calls) == 3
    assert len(no_sleep) == 2


@responses.activate
def test_non_idempotent_post_is_not_resent_after_a_timeout(no_sleep):
    responses.post(f"{BASE}/x", body=requests.exceptions.ReadTimeout())
    with pytest.raises(FatalError):
        client().request("x.create", "POST", path("x"), idempotent=False)
    assert len(responses.calls) == 1


@responses.activate
def test_client_error_is_fatal_at_once(no_sleep):
    responses.get(f"{BASE}/x", status=400, json={"error": {"code": 400, "message": "bad"}})
    with pytest.raises(FatalError) as info:
        client().request("x.get", "GET", path("x"))
    assert len(responses.calls) == 1
    assert info.value.status == 400
    assert no_sleep == []


@responses.activate
def test_expected_status_is_returned_not_raised():
    responses.get(f"{BASE}/x", status=404)
    c = client()
    assert c.request("x.get", "GET", path("x"), expect=(404,)).status_code == 404
    assert c.drain_calls()[0].outcome == "absent"


@responses.activate
def test_errors_never_carry_the_url_or_body(no_sleep):
    where = path("receivers", "erika.mustermann@example.de")
    responses.get(f"{BASE}{where}", body=requests.exceptions.ConnectionError(f"{BASE}{where}"))
    with pytest.raises(RetriableError) as info:
        client().request("receivers.get", "GET", where)
    text = str(info.value)
    assert "@" not in text and "%40" not in text and "erika" not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


SECRET_PATH = path("receivers", "erika.mustermann@example.de")
SECRET_QUERY = {"token": "abcdefghijkl"}
SECRET_URL = f"{BASE}{SECRET_PATH}?token=abcdefghijkl"


@pytest.mark.parametrize(
    ("answer", "kind", "why"),
    [
        ({"status": 503}, RetriableError, "HTTP 503 after 4 attempt(s)"),
        ({"status": 403}, FatalError, "HTTP 403 after 1 attempt(s)"),
        (
            {"body": requests.exceptions.ReadTimeout(SECRET_URL)},
            RetriableError,
            "read timeout (ReadTimeout) after 4 attempt(s)",
        ),
        (
            {"body": requests.exceptions.ConnectTimeout(SECRET_URL)},
            RetriableError,
            "connect timeout (ConnectTimeout) after 4 attempt(s)",
        ),
        (
            {"body": requests.exceptions.ConnectionError(SECRET_URL)},
            RetriableError,
            "connection failed (ConnectionError) after 4 attempt(s)",
        ),
        (
            {"body": requests.exceptions.ChunkedEncodingError(SECRET_URL)},
            RetriableError,
            "connection dropped (ChunkedEncodingError) after 4 attempt(s)",
        ),
    ],
)
@responses.activate
def test_a_failed_run_names_processor_operation_and_reason_only(no_sleep, answer, kind, why):
    if "status" in answer:  # an error body that quotes the person
        answer = {**answer, "json": {"error": "no receiver erika.mustermann@example.de"}}
    responses.get(SECRET_URL, **answer)
    with pytest.raises(kind) as info:
        client(auth=TokenAuth(lambda: ("abcdefghijkl", 300.0))).request(
            "receivers.get", "GET", SECRET_PATH, params=SECRET_QUERY
        )
    # What Prefect puts into the failed run's state message.
    shown = format_exception(info.value)
    assert shown == f"{kind.__name__}: proc receivers.get: {why}"
    for leak in ("erika", "example.de", "@", "%40", "abcdefghijkl", "token", BASE):
        assert leak not in shown and leak not in repr(info.value)


def test_a_reason_given_with_a_status_is_shown_too():
    error = FatalError("timify", "customers.create", 200, reason="no id in answer")
    assert str(error) == "timify customers.create: HTTP 200, no id in answer after 1 attempt(s)"
    assert str(FatalError("isic", "configure", None)) == "isic configure: no answer after 1 attempt(s)"


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_errors_survive_pickling_as_prefect_persists_them(dumps):
    error = RetriableError("nect", "cases.create", 409, 2, reason="deletion pending", retry_after=3.0)
    copy = pickle.loads(dumps(error))
    assert type(copy) is RetriableError and str(copy) == str(error)
    assert (copy.processor, copy.operation, copy.status, copy.attempts, copy.reason, copy.retry_after) == (
        "nect",
        "cases.create",
        409,
        2,
        "deletion pending",
        3.0,
    )


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def token_source():
    issued = []

    def fetch():
        issued.append(f"tok{len(issued) + 1}")
        return issued[-1], 300.0

    return fetch, issued


@responses.activate
def test_token_is_cached_until_shortly_before_expiry():
    fetch, issued = token_source()
    clock = FakeClock()
    c = client(auth=TokenAuth(fetch, clock=clock, leeway=30))
    responses.get(f"{BASE}/x", status=200)
    c.request("x.get", "GET", path("x"))
    clock.now = 269
    c.request("x.get", "GET", path("x"))
    assert issued == ["tok1"]
    clock.now = 271
    c.request("x.get", "GET", path("x"))
    assert issued == ["tok1", "tok2"]
    assert responses.calls[2].request.headers["Authorization"] == "Bearer tok2"


@responses.activate
def test_401_refreshes_the_token_once_and_resends():
    fetch, issued = token_source()
    responses.get(f"{BASE}/x", status=401)
    responses.get(f"{BASE}/x", json={"ok": 1})
    c = client(auth=TokenAuth(fetch))
    assert c.request("x.get", "GET", path("x")).json() == {"ok": 1}
    assert issued == ["tok1", "tok2"]
    assert [call.request.headers["Authorization"] for call in responses.calls] == [
        "Bearer tok1",
        "Bearer tok2",
    ]


@responses.activate
def test_token_calls_and_resends_after_a_401_take_their_token_from_the_processors_bucket():
    # A token revoked while calls are in flight: each 401 costs a resend (and one of them a
    # token call), which must be paced like any call, or eight calls in flight would burst.
    responses.post(f"{BASE}/auth/token", json={"token": "t"})
    responses.get(f"{BASE}/x", status=401)
    responses.get(f"{BASE}/x", json={"ok": 1})
    waits: list[float] = []
    limiter = RateLimiter(1.0, burst=1, clock=FakeClock(), sleep=waits.append)

    def fetch(plain):
        return plain.request("auth.token", "POST", path("auth", "token")).json()["token"], 300.0

    http = connectors.transport.token_client("proc", BASE, fetch, limiter=limiter)
    assert http.request("x.get", "GET", path("x")).json() == {"ok": 1}
    # token, GET (401), token again, GET resent: four requests, four tokens, three waits
    assert len(responses.calls) == 4
    assert limiter.granted == 4
    assert waits == [1.0, 2.0, 3.0]


def test_a_token_another_thread_already_replaced_is_not_fetched_again():
    # Two calls went out with tok1 and both got a 401: the first to come back fetches tok2,
    # the second resends with tok2 instead of fetching tok3 (which could revoke tok2 under
    # the first); a call refused with its own fresh token gives up.
    fetch, issued = token_source()
    auth = TokenAuth(fetch)
    assert auth.token() == "tok1"
    assert auth.renewed("Bearer tok1", may_fetch=True) == ("tok2", True)
    assert auth.renewed("Bearer tok1", may_fetch=True) == ("tok2", False)
    assert auth.renewed("Bearer tok2", may_fetch=False) == (None, False)
    assert issued == ["tok1", "tok2"]


@responses.activate
def test_a_third_401_is_fatal_without_another_refresh(no_sleep):
    # The second refresh covers a new token revoked by another thread's call before this
    # call's resend got through; refused a third time, the credentials are wrong.
    fetch, issued = token_source()
    responses.get(f"{BASE}/x", status=401)
    with pytest.raises(FatalError) as info:
        client(auth=TokenAuth(fetch)).request("x.get", "GET", path("x"))
    assert info.value.status == 401
    assert len(responses.calls) == 3
    assert issued == ["tok1", "tok2", "tok3"]


def test_raw_header_scheme_for_timify_style_auth():
    auth = TokenAuth(lambda: ("abc", 60), header="authorization", prefix="")
    prepared = requests.Request("GET", BASE).prepare()
    assert auth(prepared).headers["authorization"] == "abc"


def test_rate_limiter_spaces_calls_after_the_burst():
    clock, waits = FakeClock(), []
    limiter = RateLimiter(rate=2.0, burst=2, clock=clock, sleep=waits.append)
    for _ in range(4):
        limiter.acquire()
    assert waits == [0.5, 1.0]
    clock.now = 10.0
    assert limiter.acquire() == 0.0


def test_one_bucket_counts_every_threads_calls_against_a_fake_clock():
    # Eight threads take 25 tokens each while the clock stands still: 5 come free (the
    # burst), every other one is a slot of its own, 1/50 s after the one before; none is
    # given twice or lost, however the threads interleave. Nothing sleeps.
    clock, waits = FakeClock(), []
    limiter = RateLimiter(rate=50.0, burst=5, clock=clock, sleep=waits.append)
    start = threading.Barrier(8, timeout=10)

    def worker() -> None:
        start.wait()
        for _ in range(25):
            limiter.acquire()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert limiter.granted == 200
    assert sorted(waits) == pytest.approx([k / 50 for k in range(1, 196)])
    # 3.9 s later the 195 reserved slots are used up: the next call waits 1/50 s again.
    clock.now = 195 / 50
    assert limiter.acquire() == pytest.approx(1 / 50)


def test_every_client_of_a_processor_draws_from_the_one_bucket_of_its_processor(settings):
    from connectors import isic, timify

    first, second, other = timify.from_settings(settings), timify.from_settings(settings), isic.from_settings(settings)
    assert first.http.limiter is second.http.limiter
    assert first.http.limiter is processor_limiter("timify", settings.timify.rate_per_second)
    assert other.http.limiter is not first.http.limiter
    # Another rate in the settings: the same bucket, paced at the new rate.
    assert processor_limiter("timify", 7.5) is first.http.limiter and first.http.limiter.rate == 7.5


def test_calls_from_many_threads_are_all_in_the_call_log_and_drained_once():
    clock, waits = FakeClock(), []
    limiter = RateLimiter(rate=100.0, burst=1, clock=clock, sleep=waits.append)
    http = client(limiter=limiter)
    drained: list = []
    with responses.RequestsMock() as mock:
        mock.get(BASE + "/ping", json={})

        def worker() -> None:
            for _ in range(20):
                http.request("ping", "GET", path("ping"))
                drained.extend(http.drain_calls())

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    drained.extend(http.drain_calls())
    assert len(drained) == 120 and limiter.granted == 120 and len(waits) == 119


def test_redact_hides_emails_and_tokens():
    text = redact('to erika@example.de {"access_token": "abcdefghijkl"} Bearer xyz12345678')
    assert "erika" not in text and "abcdefghijkl" not in text and "xyz12345678" not in text
    assert redact("x-api-key: sandbox-nect-key, api_key=abcdefgh12") == "x-api-key: [redacted], api_key=[redacted]"


def test_the_http_log_is_redacted_even_if_a_caller_slips(caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="psync.http")
    logging.getLogger("psync.http").info("oops %s", "erika@example.de Bearer abcdefghijkl")
    assert "erika" not in caplog.text and "abcdefghijkl" not in caplog.text
    assert "[email]" in caplog.text


def test_the_examples_in_the_docstrings_hold():
    # redact() and path() document their contract by example (an encoded address included).
    result = doctest.testmod(connectors.transport)
    assert result.attempted >= 5 and result.failed == 0
