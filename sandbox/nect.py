"""Nect imitation (identification with the eID, seed 002): routes under ``/nect``.

A client's base URL is ``http://HOST:PORT/nect``. Nothing of this API is
public, so every shape below is **ASSUMED** and shared with ``connectors/nect.py``::

    POST   /v1/cases                {"reference": "<our pseudonymous id, 32 lowercase hex>"}, no other key
                                    -> 201 {"caseUuid", "status": "created", "reference"}
                                       400 for any other key or a reference that is no pseudonym,
                                       409 while the reference has a case (deletion pending included)
    GET    /v1/cases?reference=X    -> {"items": [case]}  (empty list if none)
    GET    /v1/cases/{uuid}         -> case, "status": "created" | "completed" | "deletion_pending";
                                       404 once deleted
    DELETE /v1/cases/{uuid}         -> 202 {"caseUuid", "status": "deletion_pending"}; again while
                                       pending -> 202; 404 unknown. Asynchronous: completed by the
                                       SECOND GET of the case after the request, so a client sees
                                       "deletion_pending" once and then 404.

Every route needs ``x-api-key: <key>`` (401 when missing or wrong); the
sandbox's key is ``sandbox-nect-key``. A static key does not expire, so the
``token_expiry`` fault only tags an otherwise normal answer. Errors:
``{"error": {"code": "conflict", "message": "..."}}`` with codes
``invalid_request``, ``unauthorized``, ``not_found``, ``conflict``.
Seed 002, 5.4.2: Nect receives nothing from us but the pseudonymous id;
the person's identity data go from the person to Nect directly.

Control routes under ``/_sandbox/nect``: ``POST /complete {"caseUuid"}``
simulates the identification having taken place (the case turns
``completed``), ``POST /complete-deletions`` completes pending deletions at
once. Rules live in :mod:`sandbox.nect_state`.
"""

from __future__ import annotations

import secrets
from functools import partial

from fastapi import Request
from starlette.responses import JSONResponse, Response

from sandbox.common import Processor, json_body
from sandbox.nect_state import NectError, NectState, nect_error_response

DEFAULT_API_KEY = "sandbox-nect-key"
API_KEY_HEADER = "x-api-key"

_json_body = partial(json_body, bad_request=partial(NectError, 400))


class Nect(Processor):
    """The Nect processor: state, API router and control router."""

    name = "nect"
    prefix = "/nect"

    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        self.api_key = api_key
        super().__init__(NectState())

    def revoke_request_token(self, headers: dict[str, str]) -> None:
        """Nothing to revoke: an API key does not expire (``token_expiry`` fault)."""

    def error_response(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """Unknown routes, wrong methods and injected errors under ``/nect`` answer in Nect's shape."""
        return nect_error_response(status, message, headers)

    def _authenticate(self, request: Request) -> Response | None:
        given = request.headers.get(API_KEY_HEADER)
        if given is not None and secrets.compare_digest(given.encode(), self.api_key.encode()):
            return None
        return nect_error_response(401, "API key missing or invalid")

    def _register_api(self) -> None:
        s = self.state
        add = self._route

        async def create_case(request: Request) -> object:
            """Open an identification case for a pseudonymous reference; nothing else is taken."""
            return s.create_case(await _json_body(request))

        async def find_cases(request: Request) -> object:
            """Cases, filtered by ``reference``."""
            return {"items": s.find_cases(request.query_params.get("reference"))}

        async def get_case(request: Request) -> object:
            """One case (a pending deletion completes on the second get)."""
            return s.get_case(request.path_params["uuid"])

        async def delete_case(request: Request) -> object:
            """Request the case's erasure; it completes later."""
            return s.delete_case(request.path_params["uuid"])

        add("POST", "/v1/cases", create_case, status=201)
        add("GET", "/v1/cases", find_cases)
        add("GET", "/v1/cases/{uuid:path}", get_case)
        add("DELETE", "/v1/cases/{uuid:path}", delete_case, status=202)

    def _register_control(self) -> None:
        s = self.state

        @self.control.post("/complete")
        async def complete(request: Request) -> Response:
            """The person went through the identification: ``{"caseUuid"}`` turns ``completed``."""
            return JSONResponse(s.complete(await _json_body(request)))

        @self.control.post("/complete-deletions")
        async def complete_deletions() -> Response:
            """Complete every pending case deletion now."""
            return JSONResponse({"completed": s.complete_deletions()})
