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

import json
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from sandbox.timify_state import (
    COMPANY_ID,
    CUSTOMER_FIELDS,
    LIMIT_DEFAULT,
    TimifyError,
    TimifyState,
    paginate,
    timify_error_response,
)

DEFAULT_APP_ID = "psync-sandbox"
DEFAULT_APP_SECRET = "sandbox-secret"

Handler = Callable[[Request], Awaitable[object]]


def request_token(authorization: str | None) -> str | None:
    """The token of an ``authorization`` header: raw, or after ``Bearer ``."""
    if not authorization or not authorization.strip():
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip() or None
    return authorization.strip()


async def _json_body(request: Request) -> object:
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise TimifyError(400, "body is not valid JSON") from None


def _query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise TimifyError(400, f"{name} must be an integer") from None


def _external(request: Request) -> bool:
    return request.query_params.get("external", "").lower() in ("1", "true")


def _page(request: Request, items: list) -> dict:
    return paginate(items, _query_int(request, "page", 1), _query_int(request, "limit", LIMIT_DEFAULT))


def _one(data: object) -> dict:
    return {"data": data, "status": 1}


class Timify:
    """The TIMIFY processor: state, API router and control router."""

    name = "timify"
    prefix = "/timify"

    def __init__(
        self,
        token_ttl_s: int = 3600,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str = DEFAULT_APP_SECRET,
    ) -> None:
        self.token_ttl_s = token_ttl_s
        self.app_id = app_id
        self.app_secret = app_secret
        self.state = TimifyState()
        self.api = APIRouter()
        self.control = APIRouter()
        self._register_api()
        self._register_control()

    # -- processor interface used by sandbox.app --------------------------
    def reset(self) -> None:
        """Back to the initial state (fixed fields, services, resources; no tokens)."""
        self.state.reset()

    def snapshot(self) -> dict:
        """State for ``GET /_sandbox/state``."""
        return self.state.snapshot()

    def revoke_request_token(self, headers: dict[str, str]) -> None:
        """Revoke the access token a request carries (``token_expiry`` fault)."""
        token = request_token(headers.get("authorization"))
        if token:
            self.state.revoke_token(token)

    def error_response(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """Unknown routes and wrong methods under ``/timify`` answer in TIMIFY's shape."""
        return timify_error_response(status, message, headers)

    # -- routing helpers --------------------------------------------------
    def _add(self, method: str, template: str, handler: Handler, auth: bool = True, status: int = 200) -> None:
        key = f"{method} {template}"
        state = self.state

        async def endpoint(request: Request) -> Response:
            if auth:
                token = request_token(request.headers.get("authorization"))
                if token is None or not state.token_valid(token):
                    return timify_error_response(401, "token expired or invalid")
                if request.headers.get("company-id") != COMPANY_ID:
                    return timify_error_response(403, "missing or unknown company-id")
            state.count_call(key)
            try:
                result = await handler(request)
            except TimifyError as exc:
                return exc.response()
            return JSONResponse(result, status_code=status)

        endpoint.__name__ = f"timify_{method.lower()}_{template.strip('/').replace('/', '_')}"
        endpoint.__doc__ = handler.__doc__
        self.api.add_api_route(template, endpoint, methods=[method], name=endpoint.__name__)

    def _register_api(self) -> None:
        s = self.state
        add = self._add

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
        add("GET", "/v1/customers/{id}", get_customer)
        add("PATCH", "/v1/customers/{id}", patch_customer)
        add("DELETE", "/v1/customers/{id}", delete_customer)
        add("POST", "/v1/appointments/delete/bulk", bulk_delete)
        add("GET", "/v1/appointments", list_appointments)
        add("POST", "/v1/appointments", create_appointment, status=201)
        add("GET", "/v1/appointments/{id}", get_appointment)
        add("PATCH", "/v1/appointments/{id}", patch_appointment)

    def _register_control(self) -> None:
        s = self.state

        @self.control.post("/expire-tokens")
        async def expire_tokens() -> Response:
            """Revoke every access token; refresh tokens stay usable."""
            return JSONResponse({"revoked": s.revoke_all_tokens()})
