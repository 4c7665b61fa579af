"""The one HTTP layer every connector uses: session, auth, retry, errors, redaction, rate limit.

A connector builds one ``HttpClient`` and calls ``client.request(op, method, path(...), ...)``.
``op`` is a stable operation name ("receivers.upsert"); it, never the URL, is what logs, errors
and the call log carry, because our URLs contain e-mail addresses.

Paths are built by ``path(*segments)`` only, which percent-encodes every segment on its own;
``request`` refuses any other string. An id or an address is therefore always one segment,
whatever it holds (``#``, ``?``, ``/``, ``%`` and spaces are legal in an address's local part),
and pasting one into a path string is a TypeError at the first call, not a request to the
wrong resource. Query values go in ``params=`` (requests encodes them).

Example::

    client = HttpClient("cleverreach", "https://rest.cleverreach.com/v3", auth=auth)
    groups = client.request("groups.list", "GET", path("groups.json")).json()
    client.request("receivers.get", "GET", path("groups.json", gid, "receivers", email))
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar
from requests.hooks import dispatch_hook
from requests.sessions import merge_setting
from requests.structures import CaseInsensitiveDict
from requests.utils import get_netrc_auth
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay

T = TypeVar("T")
log = logging.getLogger("psync.http")

USER_AGENT = "processor-sync/0.1"


class ProcessorError(Exception):
    """A call to a processor failed. Carries names and numbers only, never a body or URL.

    Its text is what a failed Prefect run shows: the processor, the operation and why.

    >>> str(FatalError("timify", "customers.create", 200, reason="no id in answer"))
    'timify customers.create: HTTP 200, no id in answer after 1 attempt(s)'
    """

    def __init__(
        self,
        processor: str,
        operation: str,
        status: int | None,
        attempts: int = 1,
        reason: str = "",
        retry_after: float | None = None,
    ):
        self.processor, self.operation, self.status = processor, operation, status
        self.attempts, self.reason, self.retry_after = attempts, reason, retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        # Built from the fields, so the attempts the retry loop counts in afterwards show.
        status = f"HTTP {self.status}" if self.status is not None else ""
        what = ", ".join(part for part in (status, self.reason) if part)
        return f"{self.processor} {self.operation}: {what or 'no answer'} after {self.attempts} attempt(s)"

    def __reduce__(self):
        # Prefect pickles a failed run's exception when it persists results; the default
        # (the class called with the message alone) cannot rebuild this one.
        return type(self), (self.processor, self.operation, self.status, self.attempts, self.reason, self.retry_after)

    @property
    def outcome_unknown(self) -> bool:
        """Whether a write may have been applied: no answer (dropped connection, read
        timeout) or a server error. A 4xx, or a 429 the layer already waited out, was not.
        A connector checks by its own id before it repeats such a write."""
        return self.status is None or self.status >= 500


class RetriableError(ProcessorError):
    """Worth trying again: rate limited, server error, timeout, dropped connection."""


class FatalError(ProcessorError):
    """Trying again will not help: bad request, forbidden, not found where required."""


def classify(status: int) -> type[ProcessorError] | None:
    """None for success; otherwise the error kind. Override per connector if needed."""
    if status < 400:
        return None
    if status in (408, 425, 429) or status >= 500:
        return RetriableError
    return FatalError


# "%40" too: in a request path or query the address arrives percent-encoded (see `path`).
_EMAIL = re.compile(r"[^\s/@\"']+(?:@|%40)[^\s/@\"']+")
# Not after a dot: "oauth.token: connection failed" names an operation, not a token.
_BEARER = re.compile(r"(?i)(bearer\s+|(?<!\.)token[\"'=:\s]+|(?:x-)?api[-_]?key[\"'=:\s]+)[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str) -> str:
    """Blank out e-mail addresses and tokens in anything about to be logged or raised.

    >>> redact("GET /receivers/erika@example.de with Bearer abcdef123456")
    'GET /receivers/[email] with Bearer [redacted]'
    >>> redact("x-api-key: sandbox-nect-key")
    'x-api-key: [redacted]'
    >>> redact("cleverreach oauth.token: connection failed")  # an operation's name
    'cleverreach oauth.token: connection failed'

    An address as ``path`` encodes it, as urllib3 logs the request line:

    >>> redact('"DELETE /v3/groups.json/7/receivers/a%2Fb%23c%3Fd%25e%20f%40example.de HTTP/1.1" 404')
    '"DELETE /v3/groups.json/7/receivers/[email] HTTP/1.1" 404'
    """
    return _BEARER.sub(r"\1[redacted]", _EMAIL.sub("[email]", text))


class RedactingFilter(logging.Filter):
    """Defence in depth: whatever reaches this layer's log is redacted once more."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


log.addFilter(RedactingFilter())
# urllib3 logs every request line at DEBUG, and our paths can hold an e-mail address.
logging.getLogger("urllib3.connectionpool").addFilter(RedactingFilter())


def refuse_unlisted(fields: Iterable[str], allowed: Collection[str], recipient: str) -> None:
    """Raise ValueError naming the first field not in `allowed` (each processor's allow-list).

    >>> refuse_unlisted(["email", "iban"], {"email"}, "ISIC")
    Traceback (most recent call last):
    ...
    ValueError: field iban is not allowed for ISIC
    """
    for key in fields:
        if key not in allowed:
            raise ValueError(f"field {key} is not allowed for {recipient}")


class EncodedPath(str):
    """A request path made by :func:`path`, every segment percent-encoded.

    The only kind of path ``HttpClient.request`` takes. It is a ``str``, but anything made
    from it by concatenation or formatting is a plain ``str`` again, so an id appended
    unencoded is refused rather than sent.
    """

    __slots__ = ()


def path(*segments: str | int) -> EncodedPath:
    """The request path of these segments, each percent-encoded on its own (nothing safe).

    An id or an e-mail address is one segment whatever it holds: unencoded, ``#`` would end
    the path, ``?`` start a query, ``/`` add a segment, and the call would reach another
    resource (a delete answered 404 reads as "already gone"). An empty, ``.`` or ``..``
    segment is refused: URL normalisation would drop it or climb a level.

    >>> path("groups.json", 7, "receivers", "a/b#c?d%e f@example.de")
    '/groups.json/7/receivers/a%2Fb%23c%3Fd%25e%20f%40example.de'
    >>> path("v1", "customers", "..")
    Traceback (most recent call last):
    ...
    ValueError: a path segment may not be empty, "." or ".."
    """
    if not segments:
        raise ValueError("a path needs at least one segment")
    encoded = []
    for segment in segments:
        # bool is an int, and None or an object would be sent as its repr: both are bugs.
        if isinstance(segment, bool) or not isinstance(segment, (str, int)):
            raise TypeError(f"a path segment is a str or an int, not {type(segment).__name__}")
        text = str(segment)
        if text in ("", ".", ".."):
            raise ValueError('a path segment may not be empty, "." or ".."')
        encoded.append(quote(text, safe=""))
    return EncodedPath("/" + "/".join(encoded))


class PoolKeepingAdapter(HTTPAdapter):
    """requests' adapter, keeping the connection pool it found for an API's origin.

    ``HTTPAdapter`` finds the pool for every request anew: it parses the URL again, builds
    the pool key's TLS attributes and normalises the key through urllib3's pool manager, a
    good part of a small call's client time (about 100 µs of 700 on the bookings benchmark's
    machine). The pool for an origin (scheme, host, port) and TLS settings does not change,
    so it is kept here for as long as the adapter lives (``close`` drops them). Calls
    through a proxy are left to ``HTTPAdapter``. Everything else (timeouts, the errors
    raised, the response built) is ``HTTPAdapter``'s own, and a test that patches
    ``HTTPAdapter.send`` (``responses``) still answers.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pools: dict[tuple[str, Any, Any], Any] = {}

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        url = request.url
        if proxies or not isinstance(url, str):
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        # The origin: "scheme://authority", up to the path's first slash.
        end = url.find("/", url.find("//") + 2)
        key = (url if end < 0 else url[:end], verify, cert if cert is None or isinstance(cert, str) else tuple(cert))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = super().get_connection_with_tls_context(request, verify, proxies=None, cert=cert)
        return pool

    def close(self) -> None:
        self._pools.clear()
        super().close()


def make_session(pool_size: int = 4) -> requests.Session:
    """A pooled session. urllib3's own retries are off: tenacity here is the one retry loop."""
    session = requests.Session()
    adapter = PoolKeepingAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def pause(seconds: float) -> None:
    """The one place this layer waits between attempts: looked up at call time, so tests can
    patch it (and count the retries' waits)."""
    time.sleep(seconds)


def throttle(seconds: float) -> None:
    """Where a rate limiter waits for its token: apart from ``pause``, so a test counting the
    retries' waits does not count the waits of a bucket other tests in its process drained."""
    time.sleep(seconds)


class RateLimiter:
    """Token bucket: at most `rate` calls per second on average, bursts up to `burst`.

    Thread-safe: each caller reserves its token under the lock (the count may go below
    zero) and then waits outside it for its own slot, so threads sharing a bucket are
    spaced 1/rate apart without holding each other up while they wait. `clock` and
    `sleep` are injectable: a test advances a fake clock instead of sleeping.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ):
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limiter needs rate > 0 and burst >= 1")
        self.rate, self.burst, self.clock, self.sleep = rate, burst, clock, sleep
        self._tokens, self._last = float(burst), clock()
        self._lock = threading.Lock()
        self.granted = 0  # tokens handed out: what a test or the benchmark counts

    def acquire(self) -> float:
        """Take one token, waiting if none is left; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1
            self.granted += 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait:
            (self.sleep or throttle)(wait)
        return wait

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (the tokens saved so far stay)."""
        if rate <= 0:
            raise ValueError("a rate limiter needs rate > 0")
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last, self.rate = now, rate


# One bucket per processor for the whole process: every client of a processor (a flow's,
# each task's, the erasure's) and every thread they call from draw from it, so a run never
# exceeds the processor's rate however many calls it keeps in flight. Several worker
# processes each have their own: see the README ("Rate limits and workers").
_LIMITERS: dict[str, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def processor_limiter(processor: str, rate: float) -> RateLimiter:
    """The process's one token bucket for `processor`, at `rate` calls per second.

    Asked again with another rate (the settings changed), the same bucket takes it.

    >>> processor_limiter("doc-example", 5.0) is processor_limiter("doc-example", 50.0)
    True
    >>> processor_limiter("doc-example", 50.0).rate
    50.0
    """
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(processor)
        if limiter is None:
            limiter = _LIMITERS[processor] = RateLimiter(rate)
        elif limiter.rate != rate:
            limiter.set_rate(rate)
        return limiter


class TokenAuth(AuthBase):
    """Bearer-style token auth: cached until shortly before expiry, refreshed on a 401 (at
    most twice per call; a token another thread already replaced is not fetched again:
    see ``renewed``).

    `fetch` returns ``(token, lifetime_seconds)``; it gets its own plain session so a token
    request never recurses into this auth. `header`/`prefix` fit schemes like TIMIFY's raw
    ``authorization: <token>``. A resend after a 401 takes a token from `limiter`, the
    processor's bucket, like every other request to it.
    """

    def __init__(
        self,
        fetch: Callable[[], tuple[str, float]],
        header: str = "Authorization",
        prefix: str = "Bearer ",
        leeway: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        limiter: RateLimiter | None = None,
    ):
        self.fetch, self.header, self.prefix = fetch, header, prefix
        self.leeway, self.clock, self.limiter = leeway, clock, limiter
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self.refreshes = 0

    def token(self, force: bool = False) -> str:
        with self._lock:
            if force or self._token is None or self.clock() >= self._expires:
                token, lifetime = self.fetch()
                self._token = token
                self._expires = self.clock() + max(0.0, lifetime - self.leeway)
                self.refreshes += 1
            return self._token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[self.header] = self.prefix + self.token()
        request.register_hook("response", self._retry_on_401)
        return request

    def renewed(self, used: str, may_fetch: bool) -> tuple[str | None, bool]:
        """The token to resend with after the header value `used` was refused with a 401,
        and whether it was fetched for this.

        Several threads share this auth: when another one already replaced the refused
        token, its new one is taken rather than fetching yet another (which could revoke
        that one under a thread still using it). Only a refused token that is still the
        current one is replaced, and only if `may_fetch`; (None, False): give up (a token
        this call fetched itself was refused: the credentials are wrong).
        """
        with self._lock:
            if self._token is not None and self.prefix + self._token != used:
                return self._token, False
            if not may_fetch:
                return None, False
            token, lifetime = self.fetch()
            self._token = token
            self._expires = self.clock() + max(0.0, lifetime - self.leeway)
            self.refreshes += 1
            return token, True

    def _retry_on_401(self, response: requests.Response, **kwargs) -> requests.Response:
        # A new token when the refused one is still current, at most twice per call: once
        # for the expired token, once more when another thread's call had the new one
        # revoked before this call's resend got through (a third refusal: the credentials);
        # a few resends in all, for when other threads replace the token meanwhile.
        fetched = 0
        for _ in range(_MOST_401_RESENDS):
            if response.status_code != 401:
                break
            used = response.request.headers.get(self.header, "")
            token, fetching = self.renewed(
                used if isinstance(used, str) else used.decode(), may_fetch=fetched < _MOST_401_FETCHES
            )
            if token is None:
                break
            fetched += fetching
            response.content  # noqa: B018 - reading the body drains it, so the connection can be reused
            retry = response.request.copy()
            retry.headers[self.header] = self.prefix + token
            if self.limiter is not None:
                self.limiter.acquire()
            new = response.connection.send(retry, **kwargs)
            new.history.append(response)
            new.request = retry
            response = new
        return response


_MOST_401_RESENDS = 4
_MOST_401_FETCHES = 2


@dataclass(frozen=True)
class CallRecord:
    """One logical call to a processor, as the audit trail records it."""

    processor: str
    operation: str
    status: int | None
    attempts: int
    outcome: str  # "ok" | "absent" | "retriable" | "fatal"
    items: int = 0


# Where the calls of a delivery batch are also written as they are made (``flows.journal``):
# a process killed before the batch's commit leaves them for the next batch to audit. Set
# per context, so only that batch's thread and the workers it starts write there.
IN_FLIGHT = "in_flight"  # a journal's line for a call about to be sent; its outcome follows
CALL_JOURNAL: ContextVar[Callable[[CallRecord], None] | None] = ContextVar("psync_call_journal", default=None)


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy: bounded attempts and time, capped Retry-After, jittered backoff."""

    max_attempts: int = 5
    max_seconds: float = 120.0
    retry_after_cap: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ProcessorError) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry_after_cap)
        # Exponential backoff with full jitter (AWS architecture blog's recommendation).
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** (state.attempt_number - 1))
        return random.uniform(0, ceiling)


def _retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


_NOT_SENT = (requests.exceptions.ConnectTimeout,)
_TRANSPORT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


def _no_answer(exc: Exception) -> str:
    """Why no answer came, in words and by class name: never the exception's text (a URL)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):  # also a ConnectionError
        what = "connect timeout"
    elif isinstance(exc, requests.exceptions.Timeout):
        what = "read timeout"
    elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
        what = "connection dropped"
    else:
        what = "connection failed"
    return f"{what} ({type(exc).__name__})"


# What ``send`` prepares itself; a call with any other keyword goes through Session.request.
_SEND_KEYWORDS = frozenset({"headers", "params", "json", "data", "files", "auth"})


def send(
    session: requests.Session, method: str, url: str, timeout: Any, url_prepared: bool = False, **kwargs: Any
) -> requests.Response:
    """``session.request(method, url, timeout=timeout, **kwargs)``, at about half its client CPU.

    ``Session.request`` spends more of a small call's client time than the call itself:
    it builds and merges two cookie jars (ours are empty: no processor sets a cookie), merges
    every setting with the session's through ``isinstance`` checks against a typing
    Protocol, and parses the URL again for each. This prepares the same request with
    ``PreparedRequest``'s own steps and sends it through the session's adapter (so a
    mounted or mocked adapter still answers), with the same result: the session's headers,
    params, auth and hooks merged in, the environment's proxies, CA bundle and netrc read
    when ``session.trust_env`` (``environment_resolved_session`` resolved them once), the
    response hooks run (``TokenAuth``'s resend on a 401), cookies sent and kept when there
    are any, redirects followed by the session's own ``resolve_redirects``, the body read.
    Not kept: ``Response.elapsed`` (nothing reads it). Keywords other than headers, params,
    json, data, files and auth are left to ``session.request``.

    `url_prepared`: the caller knows that requests' URL preparation would leave `url` as it
    is (``HttpClient``: its base URL checked once, the path from :func:`path`), so a call
    without query parameters skips it (parsing, IDNA, requoting: about 10 µs a call).
    """
    if not _SEND_KEYWORDS.issuperset(kwargs):
        return session.request(method, url, timeout=timeout, **kwargs)
    headers, params, auth = kwargs.get("headers"), kwargs.get("params"), kwargs.get("auth")
    request = requests.PreparedRequest()
    request.prepare_method(method)
    if session.params:
        params = merge_setting(params, session.params)
    if url_prepared and not params:
        request.url = url
    else:
        request.prepare_url(url, params)
    prepared_url = request.url or url  # (always set by prepare_url; typed Optional)
    if headers:
        merged = CaseInsensitiveDict(session.headers)
        merged.update(headers)
        headers = {name: value for name, value in merged.items() if value is not None}
    request.prepare_headers(headers if headers else session.headers)
    cookies = session.cookies
    if cookies:
        request.prepare_cookies(cookies)
    request.prepare_body(kwargs.get("data"), kwargs.get("files"), kwargs.get("json"))
    if auth is None:
        auth = session.auth
    if auth is None and session.trust_env:
        auth = get_netrc_auth(url)
    request.prepare_auth(auth, url)
    if session.hooks.get("response"):
        request.prepare_hooks(session.hooks)
    if session.trust_env:
        options = session.merge_environment_settings(prepared_url, {}, None, None, None)
    else:
        options = {"proxies": dict(session.proxies), "stream": session.stream, "verify": session.verify}
        options["cert"] = session.cert
    response = session.get_adapter(prepared_url).send(request, timeout=timeout, **options)
    response = dispatch_hook("response", request.hooks, response, timeout=timeout, **options)
    for answer in (*response.history, response):
        if "set-cookie" in answer.headers:
            extract_cookies_to_jar(cookies, answer.request, answer.raw)
    if response.is_redirect:
        request.prepare_cookies(cookies)  # resolve_redirects carries the request's jar along
        history = list(session.resolve_redirects(response, request, timeout=timeout, **options))
        if history:
            history.insert(0, response)
            response = history.pop()
            response.history = history
    if not options["stream"]:
        response.content  # noqa: B018 - read now, as Session.request does: the connection goes back to the pool
    return response


def environment_resolved_session(base_url: str, pool_size: int = 4) -> requests.Session:
    """A pooled session that takes proxy and CA-bundle settings from the environment once.

    requests reads them on every request (``trust_env``), walking all of ``os.environ``
    twice per call: for a small call such as a DELETE, more client time than the call
    itself. The same settings, resolved for the API's host when the session is made.
    """
    session = make_session(pool_size)
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return session


def http_options(
    settings: Any,
    rate_per_second: float,
    base_url: str | None = None,
    processor: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """HttpClient keyword arguments from the settings: timeouts, the retry policy, a limiter,
    and (given the API's `base_url`) a session with the environment's proxy settings.

    Every connector's ``from_settings`` builds its client from this, so all processors
    share one policy. Given the `processor`, the limiter is that processor's one bucket for
    the process (``processor_limiter``); the session pools as many connections as a run
    keeps calls in flight (``http_in_flight``). ``overrides`` win (tests pass ``session=``
    or ``sleep=``).

    Example::

        HttpClient("timify", url, auth=auth, **http_options(settings, 10.0, sleep=fake_sleep))
    """
    options: dict[str, Any] = {
        "timeout": (settings.http_connect_timeout, settings.http_read_timeout),
        "policy": RetryPolicy(
            max_attempts=settings.http_max_attempts,
            max_seconds=settings.http_max_retry_seconds,
            retry_after_cap=settings.http_retry_after_cap,
        ),
        "limiter": processor_limiter(processor, rate_per_second) if processor else RateLimiter(rate_per_second),
    }
    if base_url and overrides.get("session") is None:
        # One connection per call in flight, and a few for the token and the erasure's tasks.
        options["session"] = environment_resolved_session(base_url, in_flight(settings) + 4)
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options


def setup(settings: Any, processor: str, **overrides: Any) -> tuple[Any, str, dict[str, Any]]:
    """What every connector's ``from_settings`` starts with: the processor's settings group
    (``core.settings.ProcessorSettings``), its credential (from the environment or a Secret
    block) and the ``HttpClient`` options (``http_options``: the one retry policy, the
    processor's one rate limiter, a session at its API root).

    Raises a ``FatalError`` ("configure") when the credential or a field the client needs is
    missing; the CLI names the missing variables (``psync check`` reads the same group).

    Example::

        own, secret, options = setup(settings, "flexperto", session=session)
        return Flexperto.connect(own.base_url, own.client_id, secret, **options)
    """
    own = settings.processor(processor)
    secret = own.secret()
    if not secret or not all(own.is_set(name) for name in own.needs):
        raise FatalError(processor, "configure", None, reason="credentials not configured")
    options = http_options(settings, own.rate_per_second, base_url=own.base_url, processor=processor, **overrides)
    return own, secret, options


_THREAD = threading.local()


def calls_on_this_thread() -> int:
    """How many requests this thread has sent so far (every attempt): a pool that keeps
    calls in flight judges the time per call by it (``flows.common.Pace``)."""
    return getattr(_THREAD, "calls", 0)


class HttpClient:
    """Calls one processor's API through the shared session, auth, limiter and retry policy."""

    def __init__(
        self,
        processor: str,
        base_url: str,
        auth: AuthBase | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (5.0, 60.0),
        policy: RetryPolicy = RetryPolicy(),
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], None] | None = None,
    ):
        self.processor = processor
        self.base_url = base_url.rstrip("/")
        self.auth, self.timeout, self.policy = auth, timeout, policy
        self.session = session or make_session()
        self.limiter = limiter
        self.sleep = sleep
        self._retry_loop: tuple[RetryPolicy, Retrying] | None = None
        self._prepared_base: tuple[str, bool] | None = None
        self.calls: list[CallRecord] = []
        # Calls are made from several threads at once (a batch's workers): the log is
        # appended to and drained under this lock, so a drain never loses a call.
        self.calls_lock = threading.Lock()

    def create_or_find(
        self,
        op: str,
        create: Callable[[], requests.Response],
        find: Callable[[], T | None],
        created: Callable[[requests.Response], T],
    ) -> T:
        """Create a record the processor also knows by our own id: never twice, and retried
        under the one policy like any other call.

        `create` sends the create once (not idempotent, ``expect=(409,)``); `find` looks the
        record up by our id (None: not there); `created` reads the answer. A 409 or a create
        whose outcome is unknown (5xx, no answer) is looked up: found, it is the record; not
        found, the create is sent again after the policy's backoff, up to its attempts. When
        they run out, the last real failure is raised with its status (retriable: the record
        is tried again on the next run), never "not found". A 4xx refuses for good at once.

        Example::

            customer_id = http.create_or_find(
                "customers.create",
                lambda: http.request("customers.create", "POST", path("customers"), json=body,
                                     idempotent=False, expect=(409,)),
                lambda: find_customer(external_id),
                lambda response: response.json()["id"],
            )
        """
        last: ProcessorError | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            if attempt > 1:
                ceiling = min(self.policy.backoff_max, self.policy.backoff_initial * 2 ** (attempt - 2))
                (self.sleep or pause)(random.uniform(0, ceiling))
            try:
                response = create()
            except ProcessorError as exc:
                if not exc.outcome_unknown:
                    raise
                last = exc
            else:
                if response.status_code != 409:
                    return created(response)
                last = FatalError(self.processor, op, 409, attempt, reason="exists, but not found by our id")
            found = find()
            if found is not None:
                return found
        assert last is not None
        kind = RetriableError if last.outcome_unknown else FatalError
        raise kind(self.processor, op, last.status, self.policy.max_attempts, reason=last.reason)

    def drain_calls(self) -> list[CallRecord]:
        """Calls made since the last drain, for the flow to write to the audit trail."""
        # Cleared in place: the token client of a connector shares this list (and lock).
        with self.calls_lock:
            calls = list(self.calls)
            self.calls.clear()
        return calls

    def request(
        self,
        op: str,
        method: str,
        path: EncodedPath,
        *,
        expect: Collection[int] = (),
        idempotent: bool = True,
        items: int = 0,
        **kwargs,
    ) -> requests.Response:
        """Send with retries; returns a 2xx response or one whose status is in `expect`.

        A non-idempotent call is retried only when it certainly never reached the server
        (connect timeout) or was turned away (429), so it is never applied twice. `path`
        comes from :func:`path`; any other string is refused before anything is sent.
        """
        if not isinstance(path, EncodedPath):
            # Message without the value: it may hold the very address that was pasted in.
            raise TypeError("request path must be built with transport.path(...)")
        attempts = 0
        kwargs.setdefault("auth", self.auth)

        def once() -> requests.Response:
            nonlocal attempts
            attempts += 1
            if self.limiter:
                self.limiter.acquire()
            _THREAD.calls = getattr(_THREAD, "calls", 0) + 1
            try:
                response = send(
                    self.session, method, self.base_url + path, self.timeout, self._base_prepared(), **kwargs
                )
            except _TRANSPORT as exc:
                lost = RetriableError if idempotent or isinstance(exc, _NOT_SENT) else FatalError
                # The exception text holds the URL (and so an e-mail address): name only.
                raise lost(self.processor, op, None, attempts, _no_answer(exc)) from None
            status = response.status_code
            if status in expect:
                return response
            kind = classify(status)
            if kind is None:
                return response
            if kind is RetriableError and not idempotent and status != 429:
                kind = FatalError
            retry_after = _retry_after_seconds(response) if status == 429 else None
            raise kind(self.processor, op, status, attempts, retry_after=retry_after)

        started = time.monotonic()
        if (journal := CALL_JOURNAL.get()) is not None:
            journal(CallRecord(self.processor, op, None, 0, IN_FLIGHT, items))  # before it can leave
        try:
            response = self._retrying()(once)
        except ProcessorError as exc:
            exc.attempts = attempts
            outcome = "retriable" if isinstance(exc, RetriableError) else "fatal"
            self._record(op, exc.status, attempts, outcome, items, started)
            raise
        outcome = "absent" if response.status_code == 404 else "ok"
        self._record(op, response.status_code, attempts, outcome, items, started)
        return response

    def _retrying(self) -> Retrying:
        """The one retry policy as a tenacity controller, built once per client and policy
        rather than per call (its construction cost a call more than its loop).

        One controller serves every thread: tenacity keeps its statistics and its loop state
        per thread, and each call brings its own attempt function. Its sleep looks up
        ``self.sleep`` and the module's ``pause`` at each wait, so a test that patches either
        after the client was made still sees every wait.
        """
        built = self._retry_loop
        if built is None or built[0] is not self.policy:
            policy = self.policy
            retrying = Retrying(
                retry=retry_if_exception_type(RetriableError),
                stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.max_seconds),
                wait=policy.wait,
                sleep=self._wait,
                reraise=True,
                before_sleep=self._log_retry,
            )
            built = self._retry_loop = (policy, retrying)
        return built[1]

    def _base_prepared(self) -> bool:
        """Whether requests' URL preparation leaves ``base_url + path(...)`` as it is, so
        ``send`` may skip it (checked once per base URL).

        A path from :func:`path` holds unreserved characters, ``/`` and ``%XX`` of reserved
        or non-ASCII bytes only, never a ``.`` or ``..`` segment: preparation changes none
        of it. What it may change is the base URL (an upper-case or IDNA host, a character
        to quote): then every call is prepared as before.
        """
        checked = self._prepared_base
        if checked is None or checked[0] != self.base_url:
            probe, sample = requests.PreparedRequest(), self.base_url + path("a b", "c%40d.de", "~_.-")
            try:
                probe.prepare_url(sample, None)
                same = probe.url == sample
            except requests.exceptions.RequestException:
                same = False
            checked = self._prepared_base = (self.base_url, same)
        return checked[1]

    def _wait(self, seconds: float) -> None:
        (self.sleep or pause)(seconds)

    def _record(self, op, status, attempts, outcome, items, started) -> None:
        call = CallRecord(self.processor, op, status, attempts, outcome, items)
        with self.calls_lock:
            self.calls.append(call)
        if (journal := CALL_JOURNAL.get()) is not None:
            journal(call)
        if log.isEnabledFor(logging.DEBUG):  # (the line's arguments cost more than the check)
            log.debug(
                "%s %s -> %s (%s, %d attempt(s), %d item(s), %.0f ms)",
                self.processor,
                op,
                status,
                outcome,
                attempts,
                items,
                (time.monotonic() - started) * 1000,
            )

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("retrying %s (attempt %d): %s", self.processor, state.attempt_number, exc)


def token_client(
    processor: str,
    root: str,
    fetch: Callable[[HttpClient], tuple[str, float]],
    api_root: str | None = None,
    header: str = "Authorization",
    prefix: str = "Bearer ",
    **http_options,
) -> HttpClient:
    """A processor's API client whose tokens come from ``fetch(plain_client)``.

    The token call goes through its own plain client (no auth, so no recursion) and makes
    one attempt: it runs inside a call whose retry policy already covers it, and a second
    loop would multiply the attempts. It writes into the same call log, so token calls
    reach the audit trail too, and draws from the same rate limiter, as the resends after
    a 401 do: a token that expires under eight calls in flight costs nine requests, paced.

    Example::

        http = token_client("flexperto", root, lambda plain: fetch_token(plain), **options)
    """
    limiter = http_options.get("limiter")
    plain = HttpClient(
        processor,
        root,
        session=make_session(pool_size=1),
        timeout=http_options.get("timeout", (5.0, 60.0)),
        policy=RetryPolicy(max_attempts=1),
        limiter=limiter,
    )
    auth = TokenAuth(lambda: fetch(plain), header=header, prefix=prefix, limiter=limiter)
    http = HttpClient(processor, api_root or root, auth=auth, **http_options)
    plain.calls, plain.calls_lock = http.calls, http.calls_lock
    return http


def in_flight(settings: Any) -> int:
    """How many calls a batch keeps on the wire at once (``PSYNC_HTTP_IN_FLIGHT``)."""
    return int(getattr(settings, "http_in_flight", 8))
