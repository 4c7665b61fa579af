"""CleverReach REST API v3 imitation: routes under ``/cleverreach``.

A client's base URL is ``http://HOST:PORT/cleverreach`` (the real root is
https://rest.cleverreach.com). Every ``/v3`` route needs a bearer token from
``POST /oauth/token.php``. The real API accepts collection names with and
without ``.json`` (``groups.json/1001`` == ``groups/1001``), so each route is
registered under all spellings but counted under one canonical template.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from sandbox.cleverreach_state import PAGESIZE_DEFAULT, CleverReachState
from sandbox.errors import ApiError, error_response

DEFAULT_CLIENT_ID = "psync-sandbox"
DEFAULT_CLIENT_SECRET = "sandbox-secret"
UNAUTHORIZED_MESSAGE = "Unauthorized: token expired or invalid"

Handler = Callable[[Request], Awaitable[object]]


def bearer_token(authorization: str | None) -> str | None:
    """Extract the token from an ``Authorization: Bearer ...`` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _json_body(request: Request) -> object:
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "Bad Request: body is not valid JSON") from None


def _query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"Bad Request: {name} must be an integer") from None


def _json_variants(template: str) -> list[str]:
    """All accepted spellings of a ``/v3/<collection>/...`` template.

    ``.json`` is optional on the collection segment, and on ``delete`` in the
    bulk-delete route (``receivers.json/delete.json`` is what the docs show).
    """
    parts = template.split("/")  # ["", "v3", collection, ...]
    options = [[part] for part in parts]
    options[2] = [parts[2], parts[2] + ".json"]
    if parts[-1] == "delete" and len(parts) == 4:
        options[-1] = ["delete", "delete.json"]
    variants = [""]
    for choice in options[1:]:
        variants = [prefix + "/" + part for prefix in variants for part in choice]
    return variants


class CleverReach:
    """The CleverReach processor: state, API router and control router."""

    name = "cleverreach"
    prefix = "/cleverreach"

    def __init__(
        self,
        token_ttl_s: int = 3600,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
    ) -> None:
        self.token_ttl_s = token_ttl_s
        self.client_id = client_id
        self.client_secret = client_secret
        self.state = CleverReachState()
        self.api = APIRouter()
        self.control = APIRouter()
        self._register_api()
        self._register_control()

    # -- processor interface used by sandbox.app --------------------------
    def reset(self) -> None:
        """Back to the initial state (tokens revoked, counters zero)."""
        self.state.reset()

    def snapshot(self) -> dict:
        """State for ``GET /_sandbox/state``."""
        return self.state.snapshot()

    def revoke_request_token(self, headers: dict[str, str]) -> None:
        """Revoke the bearer token a request carries (``token_expiry`` fault)."""
        token = bearer_token(headers.get("authorization"))
        if token:
            self.state.revoke_token(token)

    # -- routing helpers --------------------------------------------------
    def _add(self, method: str, template: str, handler: Handler, auth: bool = True) -> None:
        key = f"{method} {template}"
        state = self.state

        async def endpoint(request: Request) -> Response:
            if auth:
                token = bearer_token(request.headers.get("authorization"))
                if token is None or not state.token_valid(token):
                    return error_response(401, UNAUTHORIZED_MESSAGE)
            state.count_call(key)
            try:
                result = await handler(request)
            except ApiError as exc:
                return exc.response()
            if isinstance(result, Response):
                return result
            return JSONResponse(result)

        endpoint.__name__ = f"cleverreach_{method.lower()}_{template.strip('/').replace('/', '_')}"
        endpoint.__doc__ = handler.__doc__
        paths = _json_variants(template) if template.startswith("/v3/") else [template]
        for path in paths:
            self.api.add_api_route(
                path,
                endpoint,
                methods=[method],
                include_in_schema=path == template,
                name=f"{endpoint.__name__}:{path}",
            )

    def _register_api(self) -> None:
        s = self.state
        add = self._add

        async def token(request: Request) -> Response:
            """OAuth2 client-credentials grant (HTTP Basic or body credentials)."""
            return await self._issue_token(request)

        async def list_groups(request: Request) -> object:
            """All groups."""
            return s.list_groups()

        async def create_group(request: Request) -> object:
            """Create a group from ``{"name": ...}``."""
            body = await _json_body(request)
            return s.create_group(body.get("name") if isinstance(body, dict) else None)

        async def get_group(request: Request) -> object:
            """One group."""
            return s.group(request.path_params["gid"]).data

        async def upsertplus(request: Request) -> object:
            """Batch upsert (max 1000) of receivers into a group."""
            body = await _json_body(request)
            return s.upsert(request.path_params["gid"], body)

        async def list_receivers(request: Request) -> object:
            """0-based pages of a group's receivers, filterable by type."""
            return s.receivers_page(
                request.path_params["gid"],
                request.query_params.get("type") or "all",
                _query_int(request, "page", 0),
                _query_int(request, "pagesize", PAGESIZE_DEFAULT),
            )

        async def get_receiver(request: Request) -> object:
            """A group's receiver by e-mail or id."""
            return s.receiver(request.path_params["gid"], request.path_params["email_or_id"])

        async def deactivate(request: Request) -> object:
            """Deactivate a group's receiver."""
            s.set_active(request.path_params["gid"], request.path_params["email_or_id"], False)
            return True

        async def activate(request: Request) -> object:
            """Activate a group's receiver."""
            s.set_active(request.path_params["gid"], request.path_params["email_or_id"], True)
            return True

        async def delete_receiver(request: Request) -> object:
            """Remove a receiver from one group."""
            s.delete(request.path_params["gid"], request.path_params["email_or_id"])
            return True

        async def get_receiver_anywhere(request: Request) -> object:
            """First receiver matching e-mail or id in any group."""
            return s.receiver_anywhere(request.path_params["email_or_id"])

        async def delete_receiver_everywhere(request: Request) -> object:
            """Remove an address from all groups."""
            s.delete_everywhere(request.path_params["email_or_id"])
            return True

        async def bulk_delete(request: Request) -> object:
            """Remove up to 1000 addresses from all groups; unknown ones ignored."""
            body = await _json_body(request)
            s.delete_many(body.get("receivers") if isinstance(body, dict) else None)
            return True

        async def list_attributes(request: Request) -> object:
            """Global attributes."""
            return s.list_attributes()

        async def create_attribute(request: Request) -> object:
            """Create a global attribute; 409 on duplicate name."""
            return s.create_attribute(await _json_body(request))

        add("POST", "/oauth/token.php", token, auth=False)
        add("GET", "/v3/groups", list_groups)
        add("POST", "/v3/groups", create_group)
        add("GET", "/v3/groups/{gid}", get_group)
        add("POST", "/v3/groups/{gid}/receivers/upsertplus", upsertplus)
        add("GET", "/v3/groups/{gid}/receivers", list_receivers)
        add("PUT", "/v3/groups/{gid}/receivers/{email_or_id}/deactivate", deactivate)
        add("PUT", "/v3/groups/{gid}/receivers/{email_or_id}/activate", activate)
        add("GET", "/v3/groups/{gid}/receivers/{email_or_id}", get_receiver)
        add("DELETE", "/v3/groups/{gid}/receivers/{email_or_id}", delete_receiver)
        # Registered before the {email_or_id} routes so "delete" is never
        # taken for an address.
        add("POST", "/v3/receivers/delete", bulk_delete)
        add("GET", "/v3/receivers/{email_or_id}", get_receiver_anywhere)
        add("DELETE", "/v3/receivers/{email_or_id}", delete_receiver_everywhere)
        add("GET", "/v3/attributes", list_attributes)
        add("POST", "/v3/attributes", create_attribute)

    async def _issue_token(self, request: Request) -> Response:
        client_id, client_secret = _basic_credentials(request.headers.get("authorization"))
        raw = await request.body()
        body: dict = {}
        if raw:
            content_type = request.headers.get("content-type", "")
            try:
                if "application/x-www-form-urlencoded" in content_type:
                    body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                else:
                    parsed = json.loads(raw)
                    body = parsed if isinstance(parsed, dict) else {}
            except (ValueError, UnicodeDecodeError):
                return _oauth_error(400, "invalid_request", "body must be JSON or form-encoded")
        # Body credentials are accepted as a fallback, like most OAuth servers.
        if client_id is None:
            client_id, client_secret = body.get("client_id"), body.get("client_secret")
        if client_id != self.client_id or client_secret != self.client_secret:
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        if body.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
        token = self.state.issue_token(self.token_ttl_s)
        return JSONResponse(
            {
                "access_token": token,
                "expires_in": self.token_ttl_s,
                "token_type": "bearer",
                "scope": "oa basic receivers",
            }
        )

    def _register_control(self) -> None:
        s = self.state

        @self.control.post("/unsubscribe")
        async def unsubscribe(request: Request) -> Response:
            """Simulate the receiver clicking "unsubscribe" in a newsletter."""
            body = await _json_body(request)
            affected = s.unsubscribe(body.get("email") if isinstance(body, dict) else None)
            return JSONResponse({"groups": affected})

        @self.control.post("/expire-tokens")
        async def expire_tokens() -> Response:
            """Revoke every issued token so clients must re-authenticate."""
            return JSONResponse({"revoked": s.revoke_all_tokens()})


def _basic_credentials(authorization: str | None) -> tuple[str | None, str | None]:
    if not authorization:
        return None, None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None, None
    return client_id, secret


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    # The token endpoint speaks OAuth2 (RFC 6749 §5.2), not the v3 error shape.
    return JSONResponse({"error": error, "error_description": description}, status_code=status)
