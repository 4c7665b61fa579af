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
    PATCH  /api/v2/customers/{id}      {"email"?, "phone"?}, no other key -> the customer
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

from functools import partial

from fastapi import Request
from starlette.responses import JSONResponse, Response

from sandbox.common import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    Processor,
    basic_credentials,
    form_or_json,
    json_body,
    oauth_error,
)
from sandbox.flexperto_state import FlexpertoError, FlexpertoState, flexperto_error_response

_json_body = partial(json_body, bad_request=partial(FlexpertoError, 400))


class Flexperto(Processor):
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
        super().__init__(FlexpertoState())

    def error_response(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """Unknown routes and wrong methods under ``/flexperto`` answer in Flexperto's shape."""
        return flexperto_error_response(status, message, headers)

    def _register_api(self) -> None:
        s = self.state
        add = self._route

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

        async def update_customer(request: Request) -> object:
            """Correct a customer's contact data (``email``, ``phone``)."""
            return s.update_customer(request.path_params["id"], await _json_body(request))

        async def delete_customer(request: Request) -> object:
            """Delete a customer (not its archives)."""
            s.delete_customer(request.path_params["id"])
            return None

        async def find_archives(request: Request) -> object:
            """Archives, filtered by ``customer_id``."""
            return {"items": s.find_archives(request.query_params.get("customer_id"))}

        async def get_archive(request: Request) -> object:
            """One archive."""
            return s.archive(request.path_params["id"])

        async def delete_archive(request: Request) -> object:
            """Delete one archive."""
            s.delete_archive(request.path_params["id"])
            return None

        add("POST", "/api/v2/oauth/token", token, auth=False)
        add("POST", "/api/v2/customers", create_customer, status=201)
        add("GET", "/api/v2/customers", find_customers)
        add("GET", "/api/v2/customers/{id:path}", get_customer)
        add("PATCH", "/api/v2/customers/{id:path}", update_customer)
        add("DELETE", "/api/v2/customers/{id:path}", delete_customer, status=204)
        add("GET", "/api/v2/archives", find_archives)
        add("GET", "/api/v2/archives/{id:path}", get_archive)
        add("DELETE", "/api/v2/archives/{id:path}", delete_archive, status=204)

    async def _issue_token(self, request: Request) -> Response:
        client_id, client_secret = basic_credentials(request.headers.get("authorization"))
        if client_id != self.client_id or client_secret != self.client_secret:
            return oauth_error(401, "invalid_client", "Client authentication failed")
        try:  # form-encoded; a JSON body is tolerated
            body = form_or_json(await request.body(), request.headers.get("content-type", ""))
        except ValueError:
            return oauth_error(400, "invalid_request", "body must be form-encoded")
        if body.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
        token = self.state.tokens.issue(self.token_ttl_s)
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl_s})

    def _register_control(self) -> None:
        s = self.state

        @self.control.post("/chats")
        async def chats(request: Request) -> Response:
            """Simulate a held video consultation for a customer."""
            return JSONResponse({"items": s.hold_chat(await _json_body(request))}, status_code=201)

        self._add_expire_tokens()
