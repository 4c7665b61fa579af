"""Nect: identification with the eID ("Nect Ident mit eID", seed 002, 5.4.2).

- Base URL setting: ``PSYNC_NECT_BASE_URL`` (the API root; ``/v1/...`` hangs below it).
  Sandbox: ``http://127.0.0.1:8700/nect``.
- Auth: a static API key in the ``x-api-key`` header (``PSYNC_NECT_API_KEY`` or a Secret
  block). No token and no refresh: a 401 is fatal. The key never reaches a log or an
  exception: only operation names and statuses do.
- What Nect may receive: our pseudonymous id and nothing else (seed 002, 5.4.2: "Von uns
  erhält Nect lediglich eine pseudonyme ID-Nummer"). ``check_reference`` refuses anything that
  is not one of our pseudonyms (32 lowercase hex, ``models.identity.pseudonym``) before any
  request, also for lookups, since a query string leaves the house as well. The person's
  identity data travel from the person to Nect directly, never through us.
- Create: ``open_case`` is not repeatable (a second case for a reference → 409), so the POST is
  sent non-idempotently; a 409 or a lost answer (no answer, or 5xx) looks the reference up
  first and opens a case again only when there certainly is none.
- Erasure: ``DELETE`` is asynchronous (202 ``deletion_pending``); it is verified by a later
  ``GET`` answering 404 (``deletion_verified``). 404 on the delete = already gone.

ASSUMED (nothing public; change here when the real contract is known): every path and shape.

- ``POST /v1/cases {"reference"}`` → 201 ``{"caseUuid", "status": "created", "reference"}``;
  any other key → 400; a second one with the same reference → 409
  ``{"error": {"code": "conflict", "message"}}``.
- ``GET /v1/cases?reference=`` → ``{"items": [case]}``; ``GET /v1/cases/{uuid}`` → the case
  (``"status": "created"|"completed"|"deletion_pending"``) or 404.
- ``DELETE /v1/cases/{uuid}`` → 202 ``{"caseUuid", "status": "deletion_pending"}`` (again while
  pending → 202), 404 when unknown; the case answers 404 some time later.
- Errors are never read (a message could quote what was sent); plain JSON, no envelope.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import requests
from requests.auth import AuthBase

from connectors.erasure import AWAITING, VERIFIED, Target
from connectors.transport import (
    FatalError,
    HttpClient,
    ProcessorError,
    RetriableError,
    path,
    refuse_unlisted,
    setup,
)
from core import catalogue

PROCESSOR = "nect"
API_KEY_HEADER = "x-api-key"
DELETION_PENDING = "deletion_pending"
# Used until the settings carry Nect's own fields.

_PSEUDONYM = re.compile(r"[0-9a-f]{32}")
# The allow-list, as the catalogue declares it: the pseudonymous reference only.
ALLOWED_FIELDS = catalogue.allowed_fields(PROCESSOR, "ident:")


def check_reference(reference: object) -> None:
    """Raise ValueError unless `reference` is one of our pseudonyms (32 lowercase hex).

    The message never quotes the value: a wrong one may be an e-mail address.

    >>> check_reference("erika@example.de")
    Traceback (most recent call last):
    ...
    ValueError: reference is not a pseudonymous id (32 lowercase hex); Nect gets nothing else
    """
    if not isinstance(reference, str) or not _PSEUDONYM.fullmatch(reference):
        raise ValueError("reference is not a pseudonymous id (32 lowercase hex); Nect gets nothing else")


class ApiKeyAuth(AuthBase):
    """Nect's static API key in its own header; the repr does not show it."""

    def __init__(self, api_key: str, header: str = API_KEY_HEADER):
        self._api_key, self.header = api_key, header

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[self.header] = self._api_key
        return request

    def __repr__(self) -> str:
        return f"ApiKeyAuth(header={self.header!r})"


def _json(response: requests.Response, op: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise FatalError(PROCESSOR, op, response.status_code, reason="not JSON") from None


class Nect:
    """Nect's case API. Plain methods; results are the API's JSON, errors the two kinds.

    Example::

        nect = from_settings(get_settings())
        case_uuid = nect.open_case(person.pseudonym)
        ...
        if nect.delete_case(case_uuid) == "gone" or nect.deletion_verified(case_uuid):
            ...  # record the erasure
    """

    def __init__(self, http: HttpClient):
        self.http = http

    @classmethod
    def connect(cls, base_url: str, api_key: str, **http_options: Any) -> Nect:
        """Build the client; every request carries the key in ``x-api-key``."""
        return cls(HttpClient(PROCESSOR, base_url, auth=ApiKeyAuth(api_key), **http_options))

    def open_case(self, reference: str) -> str:
        """The caseUuid of the case for our pseudonymous `reference`, opening one unless it exists.

        Never opens twice: after a 409 or a lost answer the reference is looked up first, and
        a case is opened again only when there certainly is none. A case whose deletion is
        still pending cannot be used and blocks a new one: a RetriableError says to try later.
        """
        check_reference(reference)
        body = {"reference": reference}
        refuse_unlisted(body, ALLOWED_FIELDS, "Nect")
        lost_status: int | None = None
        for _ in range(2):
            try:
                response = self.http.request(
                    "cases.create",
                    "POST",
                    path("v1", "cases"),
                    json=body,
                    idempotent=False,
                    expect=(409,),
                    items=1,
                )
            except ProcessorError as exc:
                if not exc.outcome_unknown:
                    raise
                lost_status = exc.status
            else:
                if response.status_code != 409:
                    case = _json(response, "cases.create")
                    if not isinstance(case, dict) or not case.get("caseUuid"):
                        raise FatalError(PROCESSOR, "cases.create", response.status_code, reason="no caseUuid")
                    return str(case["caseUuid"])
                lost_status = 409
            found = self.find_case(reference)
            if found is not None:
                if found.get("status") == DELETION_PENDING:
                    raise RetriableError(PROCESSOR, "cases.create", 409, reason="deletion pending")
                return str(found["caseUuid"])
        raise RetriableError(PROCESSOR, "cases.create", lost_status, 2, reason="case neither opened nor found")

    def find_case(self, reference: str) -> dict | None:
        """The case for our pseudonymous `reference`, or None."""
        check_reference(reference)
        response = self.http.request("cases.lookup", "GET", path("v1", "cases"), params={"reference": reference})
        body = _json(response, "cases.lookup")
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise FatalError(PROCESSOR, "cases.lookup", response.status_code, reason="no items")
        # Matched here too: a server that ignored the filter must not hand us a stranger's case.
        matches = (c for c in items if isinstance(c, dict) and c.get("reference") == reference)
        return next((c for c in matches if c.get("caseUuid")), None)

    def get_case(self, case_uuid: str) -> dict | None:
        """The case, or None when Nect does not hold it."""
        response = self.http.request("cases.get", "GET", path("v1", "cases", case_uuid), expect=(404,))
        return None if response.status_code == 404 else _json(response, "cases.get")

    def delete_case(self, case_uuid: str) -> str:
        """Ask for the case's erasure: "pending" (accepted) or "gone" (already absent).

        The erasure happens later; record it only once ``deletion_verified`` says so.
        """
        response = self.http.request("cases.delete", "DELETE", path("v1", "cases", case_uuid), expect=(404,), items=1)
        return "gone" if response.status_code == 404 else "pending"

    def deletion_verified(self, case_uuid: str) -> bool:
        """True only when Nect answers 404 for the case."""
        return self.get_case(case_uuid) is None


def from_settings(settings, session: requests.Session | None = None, **http_options) -> Nect:
    """The configured Nect account (API key from the environment or a Secret block)."""
    own, api_key, options = setup(settings, PROCESSOR, session=session, **http_options)
    return Nect.connect(own.base_url, api_key, **options)


class NectEraser:
    """An identification case (purpose ``ident:…``, external id: Nect's caseUuid).

    Nect only ever got our pseudonym; without a caseUuid the case is found by it.
    Deleted asynchronously (202), verified by 404.
    """

    processor = PROCESSOR
    asynchronous = True

    def _case(self, client: Nect, target: Target) -> str | None:
        if target.external_id:
            return target.external_id
        found = client.find_case(target.pseudonym)
        return str(found["caseUuid"]) if found else None

    def erase(self, client: Nect, target: Target) -> str:
        case = self._case(client, target)
        if case is None or client.delete_case(case) == "gone":
            return VERIFIED
        return AWAITING

    def verify(self, client: Nect, target: Target) -> bool:
        case = self._case(client, target)
        return case is None or client.deletion_verified(case)


ERASER = NectEraser()


class NectReader:
    """What Nect holds for an identification (purpose ``ident:…``): the case and its state
    (Nect only ever got our pseudonym)."""

    processor = PROCESSOR

    def read(self, client: Nect, target: Target) -> dict[str, Any] | None:
        case = ERASER._case(client, target)
        found = client.get_case(case) if case else None
        return {"case": found} if found is not None else None


READER = NectReader()


# Rectification and restriction (Art. 16, 18, 19; connectors/amend.py) ---------------------
class NectAmender:
    """An identification case (purpose ``ident:…``): Nect holds only our pseudonym, so there
    is nothing to correct (no field is sent) and no call to pause a case: a restriction is
    a letter."""

    processor = PROCESSOR
    can_deactivate = False
    names: Mapping[str, str] = MappingProxyType({})

    def read(self, client: Nect, holder: Any) -> dict[str, str] | None:
        case = holder.external_id or (client.find_case(holder.pseudonym) or {}).get("caseUuid")
        return {} if case and client.get_case(str(case)) is not None else None

    def update(self, client: Nect, holder: Any, changes: Any) -> None:
        if changes:
            raise ValueError("Nect holds no field to correct")

    def deactivate(self, client: Nect, holder: Any) -> bool:
        raise NotImplementedError("Nect has no call to restrict a case")

    def reactivate(self, client: Nect, holder: Any) -> bool:
        raise NotImplementedError("Nect has no call to restrict a case")


AMENDER = NectAmender()
