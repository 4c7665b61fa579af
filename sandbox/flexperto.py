"""Flexperto imitation (video consultation): routes under ``/flexperto``.

A client's base URL is ``http://HOST:PORT/flexperto`` (the real one is the
tenant's host, ``https://{tenant}.live.flexperto.com``). Nothing of this API
is public, so every shape below is **assumed**::

    POST   /api/v2/oauth/token         HTTP Basic client_id:client_secret, form grant_type=client_credentials
                                       -> {"access_token", "token_type": "Bearer", "expires_in"}
                                          (errors as OAuth2: {"error", "error_description"})
    POST   /api/v2/customers           {"external_id", "email", "phone"}, no other key
                                       -> 201 {"id": "cus_<hex>", "external_id", "email", "phone", "created_at"}
                                          409 if the external_id exists
    GET    /api/v2/customers?external_id=X   -> {"items": [customer]}  (empty list if none)
    GET    /api/v2/customers/{id}      -> customer, 404 once deleted
    DELETE /api/v2/customers/{id}      -> 204; the customer's archives stay
    GET    /api/v2/archives?customer_id=X    -> {"items": [{"id": "arc_<hex>", "customer_id",
                                                  "kind": "chat"|"recording"|"file", "created_at"}]}
    GET    /api/v2/archives/{id}       -> archive, 404 once deleted
    DELETE /api/v2/archives/{id}       -> 204

Every route but the token one needs ``Authorization: Bearer <token>``.
Errors: ``{"error": {"code": "conflict", "message": "..."}}`` with codes
``invalid_request``, ``unauthorized``, ``not_found``, ``conflict``.
Timestamps are ISO 8601 UTC with ``Z``. The control route
``POST /_sandbox/flexperto/chats {"customer_id", "at"}`` simulates a held
consultation (one ``chat`` and one ``recording`` archive dated ``at``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from sandbox.flexperto_state import FlexpertoError, FlexpertoState, flexperto_error_response

DEFAULT_CLIENT_ID = "psync-sandbox"
DEFAULT_CLIENT_SECRET = "sandbox-secret"

Handler = Callable[[Request], Awaitable[object]]


def bearer_token(authorization: str | None) -> str | None:
    """Extract the token from an ``Authorization: Bearer ...`` header value."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _basic_credentials(authorization: str | None) -> tuple[str | None, str | None]:
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        client_id, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return (client_id, secret) if sep else (None, None)


async def _json_body(request: Request) -> object:
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise FlexpertoError(400, "body is not valid JSON") from None


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    # The token endpoint speaks OAuth2 (RFC 6749 §5.2), not the API's error shape.
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


class Flexperto:
    """The Flexperto processor: state, API router and control router."""

    name = "flexperto"
    prefix = "/flexperto"

    def __init__(
        self,
        token_ttl_s: int = 3600,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
    ) -> None:
        self.token_ttl_s = token_ttl_s
        self.client_id = client_id
        self.client_secret = client_secret
        self.state = FlexpertoState()
        self.api = APIRouter()
        self.control = APIRouter()
        self._register_api()
        self._register_control()

    # -- processor interface used by sandbox.app --------------------------
    def reset(self) -> None:
        """Back to an empty tenant (tokens revoked, counters zero)."""
        self.state.reset()

    def snapshot(self) -> dict:
        """State for ``GET /_sandbox/state``."""
        return self.state.snapshot()

    def revoke_request_token(self, headers: dict[str, str]) -> None:
        """Revoke the bearer token a request carries (``token_expiry`` fault)."""
        token = bearer_token(headers.get("authorization"))
        if token:
            self.state.revoke_token(token)

    def error_response(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """Unknown routes and wrong methods under ``/flexperto`` answer in Flexperto's shape."""
        return flexperto_error_response(status, message, headers)

    # -- routing helpers --------------------------------------------------
    def _add(self, method: str, template: str, handler: Handler, auth: bool = True, status: int = 200) -> None:
        key = f"{method} {template}"
        state = self.state

        async def endpoint(request: Request) -> Response:
            if auth:
                token = bearer_token(request.headers.get("authorization"))
                if token is None or not state.token_valid(token):
                    return flexperto_error_response(401, "token expired or invalid")
            state.count_call(key)
            try:
                result = await handler(request)
            except FlexpertoError as exc:
                return exc.response()
            if isinstance(result, Response):
                return result
            if status == 204:
                return Response(status_code=204)
            return JSONResponse(result, status_code=status)

        endpoint.__name__ = f"flexperto_{method.lower()}_{template.strip('/').replace('/', '_')}"
        endpoint.__doc__ = handler.__doc__
        self.api.add_api_route(template, endpoint, methods=[method], name=endpoint.__name__)

    def _register_api(self) -> None:
        s = self.state
        add = self._add

        async def token(request: Request) -> object:
            """OAuth2 client-credentials grant, client authenticated by HTTP Basic."""
            return await self._issue_token(request)

        async def create_customer(request: Request) -> object:
            """Create a customer from contact data only; 409 on a known external_id."""
            return s.create_customer(await _json_body(request))

        async def find_customers(request: Request) -> object:
            """Customers, filtered by ``external_id``."""
            return {"items": s.find_customers(request.query_params.get("external_id"))}

        async def get_customer(request: Request) -> object:
            """One customer."""
            return s.customer(request.path_params["id"])

        async def delete_customer(request: Request) -> object:
            """Delete a customer (not its archives)."""
            s.delete_customer(request.path_params["id"])

        async def find_archives(request: Request) -> object:
            """Archives, filtered by ``customer_id``."""
            return {"items": s.find_archives(request.query_params.get("customer_id"))}

        async def get_archive(request: Request) -> object:
            """One archive."""
            return s.archive(request.path_params["id"])

        async def delete_archive(request: Request) -> object:
            """Delete one archive."""
            s.delete_archive(request.path_params["id"])

        add("POST", "/api/v2/oauth/token", token, auth=False)
        add("POST", "/api/v2/customers", create_customer, status=201)
        add("GET", "/api/v2/customers", find_customers)
        add("GET", "/api/v2/customers/{id}", get_customer)
        add("DELETE", "/api/v2/customers/{id}", delete_customer, status=204)
        add("GET", "/api/v2/archives", find_archives)
        add("GET", "/api/v2/archives/{id}", get_archive)
        add("DELETE", "/api/v2/archives/{id}", delete_archive, status=204)

    async def _issue_token(self, request: Request) -> Response:
        client_id, client_secret = _basic_credentials(request.headers.get("authorization"))
        if client_id != self.client_id or client_secret != self.client_secret:
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        raw = await request.body()
        try:
            if "application/x-www-form-urlencoded" in request.headers.get("content-type", ""):
                grant = parse_qs(raw.decode()).get("grant_type", [None])[0]
            else:  # tolerated: a JSON body
                body = json.loads(raw) if raw else {}
                grant = body.get("grant_type") if isinstance(body, dict) else None
        except (ValueError, UnicodeDecodeError):
            return _oauth_error(400, "invalid_request", "body must be form-encoded")
        if grant != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
        token = self.state.issue_token(self.token_ttl_s)
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl_s})

    def _register_control(self) -> None:
        s = self.state

        @self.control.post("/chats")
        async def chats(request: Request) -> Response:
            """Simulate a held video consultation for a customer."""
            return JSONResponse({"items": s.hold_chat(await _json_body(request))}, status_code=201)

        @self.control.post("/expire-tokens")
        async def expire_tokens() -> Response:
            """Revoke every issued token so clients must re-authenticate."""
            return JSONResponse({"revoked": s.revoke_all_tokens()})
