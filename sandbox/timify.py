"""TIMIFY DevAPI imitation: routes under ``/timify``.

A client's base URL is ``http://HOST:PORT/timify`` (the real root is
https://api.timify.com). Tokens come from ``POST /v1/auth/token``
``{"appid","appsecret"}`` and go, raw or as ``Bearer <token>``, in the
``authorization`` header; every other ``/v1`` route also needs the header
``company-id: 5f0c1a2b3c4d5e6f7a8b9c0d`` (401 without a valid token, then 403
without the right company). Answers use TIMIFY's envelopes::

    {"data": {...}, "status": 1}
    {"data": [...], "total": n, "meta": {"page", "limit", "totalItems", "totalPages"}, "status": 1}

Pages are 1-based (``?page=1&limit=50``, at most 100). Errors, in an
**assumed** shape: ``{"status": 0, "error": {"code": "DuplicateExternalId", "message": "..."}}``.
Assumed too: ``DELETE /v1/customers/{id}`` and ``PATCH /v1/appointments/{id}``.
Customers and appointments are addressed by your ``externalId`` with
``?external=1``. Rules live in :mod:`sandbox.timify_state`.
"""

from __future__ import annotations

from functools import partial

from fastapi import Request
from starlette.responses import Response

from sandbox.common import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Processor, json_body, query_int
from sandbox.timify_state import (
    COMPANY_ID,
    CUSTOMER_FIELDS,
    LIMIT_DEFAULT,
    TimifyError,
    TimifyState,
    paginate,
    timify_error_response,
)

DEFAULT_APP_ID = DEFAULT_CLIENT_ID
DEFAULT_APP_SECRET = DEFAULT_CLIENT_SECRET

_json_body = partial(json_body, bad_request=partial(TimifyError, 400))
_query_int = partial(query_int, bad_request=partial(TimifyError, 400))


def _external(request: Request) -> bool:
    return request.query_params.get("external", "").lower() in ("1", "true")


def _page(request: Request, items: list) -> dict:
    return paginate(items, _query_int(request, "page", 1), _query_int(request, "limit", LIMIT_DEFAULT))


def _one(data: object) -> dict:
    return {"data": data, "status": 1}


class Timify(Processor):
    """The TIMIFY processor: state, API router and control router."""

    name = "timify"
    prefix = "/timify"
    raw_tokens = True  # ``authorization: <token>`` works as well as ``Bearer <token>``

    def __init__(
        self,
        token_ttl_s: int = 3600,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str = DEFAULT_APP_SECRET,
    ) -> None:
        self.token_ttl_s = token_ttl_s
        self.app_id = app_id
        self.app_secret = app_secret
        super().__init__(TimifyState())

    def error_response(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """Unknown routes and wrong methods under ``/timify`` answer in TIMIFY's shape."""
        return timify_error_response(status, message, headers)

    def _authenticate(self, request: Request) -> Response | None:
        """401 without a live token, then 403 without the right ``company-id``."""
        refused = super()._authenticate(request)
        if refused is None and request.headers.get("company-id") != COMPANY_ID:
            return timify_error_response(403, "missing or unknown company-id")
        return refused

    def _register_api(self) -> None:
        s = self.state
        add = self._route

        async def token(request: Request) -> object:
            """Access and refresh token for ``{"appid","appsecret"}``."""
            body = await _json_body(request)
            body = body if isinstance(body, dict) else {}
            if body.get("appid") != self.app_id or body.get("appsecret") != self.app_secret:
                raise TimifyError(401, "invalid appid or appsecret")
            return s.issue_token(self.token_ttl_s)

        async def refresh(request: Request) -> object:
            """A new access token for ``{"refreshtoken"}``."""
            body = await _json_body(request)
            return s.refresh(body.get("refreshtoken") if isinstance(body, dict) else None, self.token_ttl_s)

        async def customfields(request: Request) -> object:
            """The company's customer field definitions."""
            return _page(request, list(CUSTOMER_FIELDS))

        async def list_customers(request: Request) -> object:
            """1-based pages of customers in creation order."""
            return _page(request, s.list_customers())

        async def create_customer(request: Request) -> object:
            """Create a customer; 409 DuplicateExternalId for a known externalId."""
            return _one(s.create_customer(await _json_body(request)))

        async def get_customer(request: Request) -> object:
            """One customer by id (or externalId with ``?external=1``)."""
            return _one(s.customer(request.path_params["id"], _external(request)))

        async def patch_customer(request: Request) -> object:
            """Merge customfields into a customer."""
            body = await _json_body(request)
            return _one(s.update_customer(request.path_params["id"], _external(request), body))

        async def delete_customer(request: Request) -> object:
            """Delete a customer (ASSUMED route)."""
            return _one({"id": s.delete_customer(request.path_params["id"], _external(request))})

        async def list_appointments(request: Request) -> object:
            """Appointments by ``from_date``/``to_date`` (<= 365 days) or ``ids``."""
            q = request.query_params
            return _page(request, s.list_appointments(q.get("from_date"), q.get("to_date"), q.get("ids")))

        async def create_appointment(request: Request) -> object:
            """Book an appointment."""
            return _one(s.create_appointment(await _json_body(request)))

        async def get_appointment(request: Request) -> object:
            """One appointment by id (or externalId with ``?external=1``)."""
            return _one(s.appointment(request.path_params["id"], _external(request)))

        async def patch_appointment(request: Request) -> object:
            """Reschedule or change an appointment (ASSUMED route)."""
            body = await _json_body(request)
            return _one(s.update_appointment(request.path_params["id"], _external(request), body))

        async def bulk_delete(request: Request) -> object:
            """Delete appointments by id; unknown ids are ignored."""
            return _one({"ids": s.delete_appointments(await _json_body(request))})

        add("POST", "/v1/auth/token", token, auth=False)
        add("POST", "/v1/auth/refreshtoken", refresh, auth=False)
        # Before /v1/customers/{id} so "customfields" is never taken for an id.
        add("GET", "/v1/customers/customfields", customfields)
        add("GET", "/v1/customers", list_customers)
        add("POST", "/v1/customers", create_customer, status=201)
        add("GET", "/v1/customers/{id:path}", get_customer)
        add("PATCH", "/v1/customers/{id:path}", patch_customer)
        add("DELETE", "/v1/customers/{id:path}", delete_customer)
        add("POST", "/v1/appointments/delete/bulk", bulk_delete)
        add("GET", "/v1/appointments", list_appointments)
        add("POST", "/v1/appointments", create_appointment, status=201)
        add("GET", "/v1/appointments/{id:path}", get_appointment)
        add("PATCH", "/v1/appointments/{id:path}", patch_appointment)

    def _register_control(self) -> None:
        self._add_expire_tokens("Revoke every access token; refresh tokens stay usable.")
