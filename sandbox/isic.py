"""ISIC card-issuer imitation (issuer RDS via the ISIC platform): routes under ``/isic``.

A client's base URL is ``http://HOST:PORT/isic``. Only the call names and their
order are public (the platform's "API for External Card Issuers"); every shape
below is **ASSUMED** and shared with ``connectors/isic.py``. RPC style: every
call is ``POST`` with a JSON body (the photo excepted) and a plain JSON answer::

    POST /auth/token            {"clientId", "clientSecret"}
                                -> {"accessToken", "tokenType": "Bearer", "expiresIn"}
                                   expiresIn = min(token_ttl_s, 300): ISIC tokens are short-lived
    POST /cardholders.set       {"cardholderId", "firstName", "lastName", "dateOfBirth": "YYYY-MM-DD",
                                 "email", "institutionName", "studentStatus": "student"|"pupil"}
                                -> the cardholder (all keys above plus "hasPhoto", "deletionPending",
                                   "createdAt", "updatedAt"); creates or updates by cardholderId.
                                   Any other key (iban, postalCode, phonePassword, ...) -> 400;
                                   409 while the cardholder's deletion is pending
    POST /cardholders.setPhoto  multipart/form-data: field "cardholderId", file "photo"
                                (JPEG or PNG by magic bytes, else 415; at most 2 MB, else 413)
                                -> {"cardholderId", "hasPhoto": true}; 404 unknown, 409 deletion pending
    POST /cards.request         {"cardholderId", "cardType": "ISIC"}
                                -> {"cardNumber": "S" + 12 digits, "cardholderId", "cardType",
                                    "status": "PENDING", "hasPhoto", "validFrom", "validTo", "createdAt"}
                                   NOT idempotent: each call makes a card. hasPhoto is frozen when
                                   the card is made (a later photo never reaches it).
                                   404 unknown, 409 deletion pending
    POST /cards.list            {"cardholderId"} -> {"cards": [card]} (any status; [] if unknown)
    POST /cards.changeStatus    {"cardNumber", "status": "VOIDED"} -> the card; only VOIDED may
                                be set (from PENDING or ACTIVE; again on VOIDED is a no-op); 404 unknown
    POST /cardholders.get       {"cardholderId"} -> the cardholder ("deletionPending": true while
                                a delete is under way), 404 when unknown or deleted
    POST /cardholders.delete    {"cardholderId"} -> 202 {"cardholderId", "status": "pending"};
                                again while pending -> 202; 404 unknown. Completed (cardholder and
                                its cards removed) by the SECOND cardholders.get after the request,
                                so a client sees "pending" once and then 404.

Every call but the token one needs ``Authorization: Bearer <token>`` (401
otherwise). JSON bodies take exactly the keys shown, all non-empty strings.
Errors: ``{"error": {"code": <HTTP status>, "message"}}`` (:mod:`sandbox.errors`).
Timestamps are ISO 8601 UTC with ``Z``; validity runs one year from the day
the card is requested. Control routes under ``/_sandbox/isic``: ``POST /issue``
``{"cardNumber"}`` (or no body: every PENDING card) makes cards ACTIVE,
``POST /complete-deletions`` completes pending deletions at once,
``POST /expire-tokens`` revokes every token. Rules live in
:mod:`sandbox.isic_state`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response

from sandbox.common import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Processor, json_body
from sandbox.errors import ApiError
from sandbox.isic_state import IsicState

# The issuer's own cap on token lifetime, whatever the sandbox-wide TTL says.
TOKEN_TTL_MAX_S = 300
FORM_FIELDS = frozenset({"cardholderId", "photo"})

Parser = Callable[[Request], Awaitable[object]]
Handler = Callable[[object], object]


@dataclass(frozen=True)
class FilePart:
    """An uploaded file of a multipart form: its declared type and its bytes."""

    content_type: str | None
    data: bytes


def parse_form(body: bytes, content_type: str) -> dict[str, str | FilePart]:
    """Parse a ``multipart/form-data`` body: text fields as str, files as :class:`FilePart`.

    Hand-written because starlette's ``request.form()`` needs python-multipart,
    which is not installed; this covers what HTTP clients send (RFC 7578).
    """
    header = Message()
    header["content-type"] = content_type
    if header.get_content_type() != "multipart/form-data":
        raise ApiError(415, "expected multipart/form-data")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ApiError(400, "multipart boundary missing")
    # Every delimiter is preceded by CRLF except the first: prepend one so a
    # single split finds them all and leaves each part's bytes exact.
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise ApiError(400, "malformed multipart body")
    fields: dict[str, str | FilePart] = {}
    for chunk in chunks[1:-1]:
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"\r\n"):
            raise ApiError(400, "malformed multipart body")
        part = Message()
        for line in head[2:].decode("utf-8", "replace").split("\r\n"):
            name, colon, value = line.partition(":")
            if not colon:
                raise ApiError(400, "malformed multipart part header")
            part[name.strip()] = value.strip()
        param = part.get_param("name", header="content-disposition")
        if param is None:
            raise ApiError(400, "multipart part without a name")
        name = collapse_rfc2231_value(param)
        if part.get_param("filename", header="content-disposition") is not None:
            declared = part.get_content_type() if part["content-type"] else None
            fields[name] = FilePart(declared, data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields


async def _photo_form(request: Request) -> dict:
    fields = parse_form(await request.body(), request.headers.get("content-type", ""))
    unknown = sorted(set(fields) - FORM_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(unknown)}")
    holder = fields.get("cardholderId")
    if not isinstance(holder, str) or not holder.strip():
        raise ApiError(400, "cardholderId is required")
    if not isinstance(fields.get("photo"), FilePart):
        raise ApiError(400, "photo file is required")
    return fields


class Isic(Processor):
    """The ISIC issuer: state, API router and control router."""

    name = "isic"
    prefix = "/isic"

    def __init__(
        self,
        token_ttl_s: int = 3600,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
    ) -> None:
        self.token_ttl_s = min(token_ttl_s, TOKEN_TTL_MAX_S)
        self.client_id = client_id
        self.client_secret = client_secret
        super().__init__(IsicState())

    def _add(self, call: str, handler: Handler, parse: Parser = json_body, auth: bool = True) -> None:
        """An RPC call: ``POST /<call>``, its parsed body handed to ``handler``."""
        key = f"POST /{call}"
        state = self.state

        async def run(request: Request) -> object:
            body = await parse(request)
            if auth:
                state.log_order(key, body)
            return handler(body)

        run.__doc__ = handler.__doc__
        self._route("POST", f"/{call}", run, auth=auth, name=f"isic_{call.replace('.', '_').replace('/', '_')}")

    def _register_api(self) -> None:
        s = self.state
        add = self._add

        def token(body: object) -> object:
            """Bearer token for ``{"clientId", "clientSecret"}``, valid at most 300 s."""
            body = body if isinstance(body, dict) else {}
            if body.get("clientId") != self.client_id or body.get("clientSecret") != self.client_secret:
                raise ApiError(401, "invalid client credentials")
            access = s.tokens.issue(self.token_ttl_s)
            return {"accessToken": access, "tokenType": "Bearer", "expiresIn": self.token_ttl_s}

        def set_photo(form: Any) -> object:
            """Upload a cardholder's photo (multipart); only size and hash are kept."""
            photo: FilePart = form["photo"]
            return s.set_photo(form["cardholderId"], photo.data, photo.content_type)

        def delete_cardholder(body: object) -> object:
            """Request the cardholder's erasure; it completes later."""
            return JSONResponse(s.delete_cardholder(body), status_code=202)

        add("auth/token", token, auth=False)
        add("cardholders.set", s.set_cardholder)
        add("cardholders.setPhoto", set_photo, parse=_photo_form)
        add("cardholders.get", s.get_cardholder)
        add("cardholders.delete", delete_cardholder)
        add("cards.request", s.request_card)
        add("cards.list", s.list_cards)
        add("cards.changeStatus", s.change_status)

    def _register_control(self) -> None:
        s = self.state

        @self.control.post("/issue")
        async def issue(request: Request) -> Response:
            """The platform produced cards: ``{"cardNumber"}``, or every PENDING card, turns ACTIVE."""
            return JSONResponse({"issued": s.issue(await json_body(request))})

        @self.control.post("/complete-deletions")
        async def complete_deletions() -> Response:
            """Complete every pending cardholder deletion now."""
            return JSONResponse({"completed": s.complete_deletions()})

        self._add_expire_tokens()
