"""Plumbing every imitated processor shares: tokens, request parsing, routing.

Each processor keeps its own contract (paths, shapes, error bodies); what is
the same everywhere lives here once:

- :class:`TokenStore`: random bearer tokens with an expiry, revocable.
- :func:`bump`: the ``calls`` / ``creates`` counters of the state snapshots.
- :func:`bearer_token`, :func:`basic_credentials`, :func:`json_body`,
  :func:`query_int`, :func:`form_or_json`, :func:`oauth_error`: request parsing.
- :class:`Processor`: the interface :mod:`sandbox.app` uses, plus the
  route wrapper that authenticates, counts and renders every API call.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from sandbox.errors import ApiError, error_response

# Credentials every processor accepts unless told otherwise.
DEFAULT_CLIENT_ID = "psync-sandbox"
DEFAULT_CLIENT_SECRET = "sandbox-secret"

Handler = Callable[[Request], Awaitable[object]]
# A path parameter with a convertor, ``{email_or_id:path}``.
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def counted_as(template: str) -> str:
    """A route template as its calls are counted and named: without convertors, so a route
    that takes ``/`` in an id (``{id:path}``) counts under the same key as before.

    >>> counted_as("/v3/groups/{gid}/receivers/{email_or_id:path}/deactivate")
    '/v3/groups/{gid}/receivers/{email_or_id}/deactivate'
    """
    return _CONVERTOR.sub(r"{\1}", template)


# Builds the 400 a processor raises for a malformed request, from a message.
BadRequest = Callable[[str], Exception]


class TokenStore:
    """Issued bearer tokens, each with an expiry in Unix seconds."""

    def __init__(self) -> None:
        self.expiry: dict[str, float] = {}
        self.issued = 0  # tokens issued since the last reset, revoked ones included

    def issue(self, ttl_s: int) -> str:
        """Issue a new random token valid for ``ttl_s`` seconds."""
        token = secrets.token_hex(20)
        self.expiry[token] = time.time() + ttl_s
        self.issued += 1
        return token

    def valid(self, token: str) -> bool:
        """True if the token was issued, not revoked and not expired."""
        expiry = self.expiry.get(token)
        if expiry is None:
            return False
        if time.time() >= expiry:
            del self.expiry[token]
            return False
        return True

    def revoke(self, token: str) -> None:
        """Revoke one token (unknown tokens are ignored)."""
        self.expiry.pop(token, None)

    def revoke_all(self) -> int:
        """Revoke every token; return how many were live."""
        count = len(self.expiry)
        self.expiry.clear()
        return count


def bump(counts: dict[str, int], key: str) -> None:
    """Add one to ``counts[key]`` (a ``calls`` or ``creates`` counter)."""
    counts[key] = counts.get(key, 0) + 1


def iso_z(moment: datetime) -> str:
    """UTC to the second with a ``Z``: ``2024-04-04T07:05:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- request parsing ---------------------------------------------------------
def bearer_token(authorization: str | None, raw: bool = False) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None.

    With ``raw`` (TIMIFY) a header without the ``Bearer`` scheme is the token itself.
    """
    value = (authorization or "").strip() if raw else authorization or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer":
        return token.strip() or None
    return (value or None) if raw else None


def basic_credentials(authorization: str | None) -> tuple[str | None, str | None]:
    """``(client_id, secret)`` of an ``Authorization: Basic ...`` value, else ``(None, None)``."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        client_id, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return (client_id, secret) if sep else (None, None)


def form_or_json(raw: bytes, content_type: str) -> dict:
    """An OAuth token request body: form-encoded, or (tolerated) a JSON object.

    Anything but an object gives ``{}``; raises ``ValueError`` when unparsable.
    """
    if not raw:
        return {}
    if "application/x-www-form-urlencoded" in content_type:
        return {k: v[0] for k, v in parse_qs(raw.decode()).items()}
    parsed = json.loads(raw)
    return parsed if isinstance(parsed, dict) else {}


def oauth_error(status: int, error: str, description: str) -> JSONResponse:
    """An OAuth2 token-endpoint error (RFC 6749 §5.2), not the API's own error shape."""
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


_bad_request: BadRequest = partial(ApiError, 400)


async def json_body(request: Request, bad_request: BadRequest = _bad_request, empty: object = None) -> object:
    """The request's JSON body; ``empty`` when there is none; 400 when it is not JSON."""
    raw = await request.body()
    if not raw:
        return empty
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_request("body is not valid JSON") from None


def query_int(request: Request, name: str, default: int, bad_request: BadRequest = _bad_request) -> int:
    """An integer query parameter, ``default`` when absent or empty, 400 otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None


# -- processors --------------------------------------------------------------
class AsyncDeletions:
    """A processor that accepts a deletion (202) and does it later, as Nect and the ISIC
    issuer do: the record stays, marked pending, until the `reads`-th read after the request
    (that read already answers 404) or until the control route completes every pending one.
    `remove(key)` takes the record out of the processor's state then.

    >>> gone = []
    >>> deletions = AsyncDeletions(gone.append)
    >>> deletions.request("c-1"); deletions.read("c-1"), deletions.read("c-1"), gone
    (False, True, ['c-1'])
    """

    def __init__(self, remove: Callable[[str], None], reads: int = 2) -> None:
        self.remove, self.reads = remove, reads
        self.pending: dict[str, int] = {}  # key -> reads answered since the request
        self.completed: list[str] = []

    def request(self, key: str) -> None:
        """Accept a deletion; asking again while it is pending changes nothing."""
        self.pending.setdefault(key, 0)

    def read(self, key: str) -> bool:
        """Count a read of `key`; True when the deletion completes with it (answer 404)."""
        if key not in self.pending:
            return False
        self.pending[key] += 1
        if self.pending[key] < self.reads:
            return False
        self._complete(key)
        return True

    def complete_all(self) -> list[str]:
        """Complete every pending deletion now; the keys."""
        done = list(self.pending)
        for key in done:
            self._complete(key)
        return done

    def _complete(self, key: str) -> None:
        del self.pending[key]
        self.remove(key)
        self.completed.append(key)

    def snapshot(self) -> dict:
        """``{"pending": [...], "completed": [...]}`` for ``GET /_sandbox/state``."""
        return {"pending": list(self.pending), "completed": self.completed}


class Processor:
    """Base of an imitated processor: state, API router and control router.

    A subclass sets ``name`` and ``prefix``, passes its state (with ``reset()``,
    ``snapshot()``, a ``calls`` dict and, if it issues tokens, a ``tokens``
    :class:`TokenStore`) to ``__init__`` and fills both routers in
    :meth:`_register_api` and :meth:`_register_control`.
    """

    name: str
    prefix: str
    raw_tokens = False  # whether a token may come without the ``Bearer`` scheme

    def __init__(self, state: Any) -> None:
        self.state = state
        self.api = APIRouter()
        self.control = APIRouter()
        self._register_api()
        self._register_control()

    def _register_api(self) -> None:
        raise NotImplementedError

    def _register_control(self) -> None:
        raise NotImplementedError

    # -- interface used by sandbox.app ---------------------------------------
    def reset(self) -> None:
        """Back to the initial state (tokens revoked, counters zero)."""
        self.state.reset()

    def snapshot(self) -> dict:
        """State for ``GET /_sandbox/state``."""
        return self.state.snapshot()

    def revoke_request_token(self, headers: dict[str, str]) -> None:
        """Revoke the token a request carries (``token_expiry`` fault)."""
        token = bearer_token(headers.get("authorization"), raw=self.raw_tokens)
        if token:
            self.state.tokens.revoke(token)

    def error_response(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """The processor's error shape (unknown routes, wrong methods, injected faults)."""
        return error_response(status, message, headers)

    # -- routing -------------------------------------------------------------
    unauthorized_message = "token expired or invalid"

    def _authenticate(self, request: Request) -> Response | None:
        """The 401 refusing a request without a live token, or None to let it through."""
        token = bearer_token(request.headers.get("authorization"), raw=self.raw_tokens)
        if token is None or not self.state.tokens.valid(token):
            return self.error_response(401, self.unauthorized_message)
        return None

    def _route(
        self,
        method: str,
        template: str,
        handler: Handler,
        auth: bool = True,
        status: int = 200,
        name: str | None = None,
        paths: Sequence[str] | None = None,
    ) -> None:
        """Register ``handler`` on the API router behind the shared wrapper.

        The wrapper refuses what :meth:`_authenticate` refuses (uncounted, only
        with ``auth``), counts the call under ``"METHOD template"``, renders an
        :class:`ApiError` as its own response, passes a returned ``Response``
        through and otherwise answers the result as JSON with ``status`` (204:
        no body). ``paths`` are all spellings of ``template`` (each counted
        under it; only ``template`` itself is in the schema).

        An id that may hold ``/`` (an e-mail address's local part may) is
        declared ``{name:path}``: the server decodes ``%2F`` before routing,
        and a plain parameter stops at the first ``/``. Counted without it.
        """
        key = f"{method} {counted_as(template)}"
        state = self.state

        async def endpoint(request: Request) -> Response:
            if auth:
                refused = self._authenticate(request)
                if refused is not None:
                    return refused
            bump(state.calls, key)
            try:
                result = await handler(request)
            except ApiError as exc:
                return exc.response()
            if isinstance(result, Response):
                return result
            if status == 204:
                return Response(status_code=204)
            return JSONResponse(result, status_code=status)

        plain = counted_as(template)
        endpoint.__name__ = name or f"{self.name}_{method.lower()}_{plain.strip('/').replace('/', '_')}"
        endpoint.__doc__ = handler.__doc__
        if paths is None:
            self.api.add_api_route(template, endpoint, methods=[method], name=endpoint.__name__)
            return
        for path in paths:
            self.api.add_api_route(
                path,
                endpoint,
                methods=[method],
                include_in_schema=path == template,
                name=f"{endpoint.__name__}:{path}",
            )

    def _add_expire_tokens(self, doc: str = "Revoke every issued token so clients must re-authenticate.") -> None:
        """The control route ``POST /expire-tokens``: ``{"revoked": <live tokens revoked>}``."""
        state = self.state

        async def expire_tokens() -> Response:
            return JSONResponse({"revoked": state.tokens.revoke_all()})

        expire_tokens.__doc__ = doc
        self.control.add_api_route("/expire-tokens", expire_tokens, methods=["POST"])
