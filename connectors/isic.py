"""ISIC: student ID orders forwarded to the issuer RDS through the ISIC platform (seed 003 XIV).

- Base URL setting: ``PSYNC_ISIC_BASE_URL`` (the API root; the dotted calls hang below it).
  Sandbox: ``http://127.0.0.1:8700/isic``.
- Auth: ``POST /auth/token {"clientId", "clientSecret"}`` → ``{"accessToken", "tokenType",
  "expiresIn"}``; ``Authorization: Bearer``. The lifetime is very short (about 300 s) and
  stated in each answer, so the token is kept for ``expiresIn`` minus 30 s, never longer; a
  401 fetches a new token once.
- Calls, in this order (the platform's "API for External Card Issuers"): ``cardholders.set``
  → ``cardholders.setPhoto`` → ``cards.request``. A photo uploaded after the card was
  requested does not reach the card, so the flow sets the photo first.
- Fields it may receive: ``ALLOWED_FIELDS``, the seven cardholder keys below. Seed 003 XIV
  lists more that are forwarded to RDS (IBAN, postcode, the telephone password, optionally
  online-banking credentials, the scanned documents); the issuer's API has no place for any
  of them and the card does not need them, so ``check_allowed`` refuses them before any call.
- Repeats: every call is idempotent except ``cards.request`` (each one makes a card).
  ``request_card`` therefore lists the cardholder's cards first and, when the answer to a
  request was lost, lists again before it requests once more.
- Erasure: ``cardholders.delete`` is asynchronous (202 ``pending``); it is verified by a later
  ``cardholders.get`` answering 404 (``deletion_verified``). 404 on the delete = already gone.

ASSUMED (only the call names and their order are public; change here when the contract is known):

- Every call is ``POST /{call}`` with a JSON body and a plain JSON answer (no envelope).
- ``cardholders.set {"cardholderId", "firstName", "lastName", "dateOfBirth": "YYYY-MM-DD",
  "email", "institutionName", "studentStatus": "student"|"pupil"}`` → the cardholder; creates
  or updates by ``cardholderId``.
- ``cardholders.setPhoto``: multipart, form field ``cardholderId`` and file ``photo``
  (``photo.jpg``/``photo.png``, ``image/jpeg``/``image/png``) → ``{"cardholderId",
  "hasPhoto": true}``; replaces any earlier photo.
- ``cards.request {"cardholderId", "cardType": "ISIC"}`` → the card ``{"cardNumber",
  "cardholderId", "cardType", "status": "PENDING"|"ACTIVE"|"VOIDED", "hasPhoto", "validFrom",
  "validTo"}``; ``cards.list {"cardholderId"}`` → ``{"cards": [card]}``;
  ``cards.changeStatus {"cardNumber", "status": "VOIDED"}`` → the card.
- ``cardholders.get {"cardholderId"}`` → the cardholder (``"deletionPending": true`` while a
  delete is under way) or 404; ``cardholders.delete {"cardholderId"}`` → 202
  ``{"status": "pending"}`` or 404.
- Errors ``{"error": {"code", "message"}}``: never read, since the message may quote
  personal data; exceptions carry the operation and status only.
- ``expiresIn`` in seconds; an answer without it is taken as ``DEFAULT_TOKEN_SECONDS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import requests

from connectors.erasure import AWAITING, VERIFIED, Target
from connectors.transport import (
    FatalError,
    HttpClient,
    path,
    refuse_unlisted,
    setup,
    token_client,
)
from core import catalogue

PROCESSOR = "isic"
CARD_TYPE = "ISIC"
VOIDED = "VOIDED"
DEFAULT_TOKEN_SECONDS = 300.0
STUDENT_STATUSES = frozenset({"student", "pupil"})
PHOTO_FILENAMES: Mapping[str, str] = {"image/jpeg": "photo.jpg", "image/png": "photo.png"}
# The bytes must be what the type says: a scanned ID document must never go out as the photo.
PHOTO_MAGIC: Mapping[str, bytes] = {
    "image/jpeg": b"\xff\xd8\xff",
    "image/png": b"\x89PNG\r\n\x1a\n",
}

# The allow-list, as the catalogue declares it for this purpose.
ALLOWED_FIELDS = catalogue.allowed_fields(PROCESSOR, "student-id:")


def check_allowed(fields: Mapping[str, Any]) -> None:
    """Raise ValueError naming the field when `fields` holds anything the issuer may not get.

    >>> check_allowed({"cardholderId": "p-1", "iban": "DE02120300000000202051"})
    Traceback (most recent call last):
    ...
    ValueError: field iban is not allowed for ISIC
    """
    refuse_unlisted(fields, ALLOWED_FIELDS, "ISIC")


def _json(response: requests.Response, op: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise FatalError(PROCESSOR, op, response.status_code, reason="not JSON") from None


class Isic:
    """The ISIC card-issuer API. Plain methods; results are the API's JSON, errors the two kinds.

    Example::

        isic = from_settings(get_settings())
        isic.set_cardholder("p-1", first_name=..., last_name=..., date_of_birth=date(2004, 5, 1),
                            email=..., institution="TU Dresden", student_status="student")
        isic.set_photo("p-1", jpeg_bytes, "image/jpeg")
        card = isic.request_card("p-1")
    """

    def __init__(self, http: HttpClient):
        self.http = http

    @classmethod
    def connect(cls, base_url: str, client_id: str, client_secret: str, **http_options: Any) -> Isic:
        """Build the client with bearer tokens from ``/auth/token``."""
        root = base_url.rstrip("/")

        def fetch(plain: HttpClient) -> tuple[str, float]:
            response = plain.request(
                "auth.token",
                "POST",
                path("auth", "token"),
                json={"clientId": client_id, "clientSecret": client_secret},
            )
            body = _json(response, "auth.token")
            token = body.get("accessToken") if isinstance(body, dict) else None
            if not token:
                raise FatalError(PROCESSOR, "auth.token", response.status_code, reason="no token")
            if str(body.get("tokenType") or "Bearer").lower() != "bearer":
                raise FatalError(PROCESSOR, "auth.token", response.status_code, reason="not a bearer token")
            return token, float(body.get("expiresIn") or DEFAULT_TOKEN_SECONDS)

        http = token_client(PROCESSOR, root, fetch, **http_options)
        return cls(http)

    # cardholders --------------------------------------------------------------------
    def set_cardholder(
        self,
        cardholder_id: str,
        *,
        first_name: str,
        last_name: str,
        date_of_birth: date,
        email: str,
        institution: str,
        student_status: str,
    ) -> dict:
        """Create or update the cardholder under our id (pseudonymous, never the e-mail)."""
        if isinstance(date_of_birth, datetime) or not isinstance(date_of_birth, date):
            raise ValueError("date_of_birth must be a date")
        if student_status not in STUDENT_STATUSES:
            raise ValueError("student_status must be 'student' or 'pupil'")
        body = {
            "cardholderId": cardholder_id,
            "firstName": first_name,
            "lastName": last_name,
            "dateOfBirth": date_of_birth.isoformat(),
            "email": email,
            "institutionName": institution,
            "studentStatus": student_status,
        }
        check_allowed(body)
        response = self.http.request("cardholders.set", "POST", path("cardholders.set"), json=body, items=1)
        return _json(response, "cardholders.set")

    def set_photo(self, cardholder_id: str, photo: bytes, media_type: str) -> None:
        """Upload (or replace) the cardholder's photo; before ``request_card``, or it is lost.

        Only a JPEG or PNG whose bytes say so is sent (ValueError otherwise, before any call).
        """
        filename = PHOTO_FILENAMES.get(media_type)
        if filename is None:
            raise ValueError("media_type must be image/jpeg or image/png")
        if not photo.startswith(PHOTO_MAGIC[media_type]):
            raise ValueError(f"photo is not {media_type}")
        response = self.http.request(
            "cardholders.setPhoto",
            "POST",
            path("cardholders.setPhoto"),
            data={"cardholderId": cardholder_id},
            files={"photo": (filename, photo, media_type)},
            items=1,
        )
        body = _json(response, "cardholders.setPhoto")
        if not isinstance(body, dict) or body.get("hasPhoto") is not True:
            raise FatalError(PROCESSOR, "cardholders.setPhoto", response.status_code, reason="photo not stored")

    def get_cardholder(self, cardholder_id: str) -> dict | None:
        """The cardholder, or None when the issuer does not hold it."""
        response = self.http.request(
            "cardholders.get",
            "POST",
            path("cardholders.get"),
            json={"cardholderId": cardholder_id},
            expect=(404,),
        )
        return None if response.status_code == 404 else _json(response, "cardholders.get")

    def delete_cardholder(self, cardholder_id: str) -> str:
        """Ask for the cardholder's erasure: "pending" (accepted) or "gone" (already absent).

        The erasure happens later; record it only once ``deletion_verified`` says so.
        """
        response = self.http.request(
            "cardholders.delete",
            "POST",
            path("cardholders.delete"),
            json={"cardholderId": cardholder_id},
            expect=(404,),
            items=1,
        )
        return "gone" if response.status_code == 404 else "pending"

    def deletion_verified(self, cardholder_id: str) -> bool:
        """True only when the issuer answers 404 for the cardholder.

        Example::

            if isic.delete_cardholder(pid) == "gone" or isic.deletion_verified(pid):
                ...  # record the erasure; otherwise the next run asks again
        """
        return self.get_cardholder(cardholder_id) is None

    # cards --------------------------------------------------------------------------
    def cards(self, cardholder_id: str) -> list[dict]:
        """The cardholder's cards, of every type and status."""
        response = self.http.request("cards.list", "POST", path("cards.list"), json={"cardholderId": cardholder_id})
        body = _json(response, "cards.list")
        cards = body.get("cards") if isinstance(body, dict) else None
        if not isinstance(cards, list):
            raise FatalError(PROCESSOR, "cards.list", response.status_code, reason="no cards list")
        # A server that ignored the filter must not hand us someone else's card.
        for card in cards:
            if str(card.get("cardholderId", cardholder_id)) != str(cardholder_id):
                raise FatalError(PROCESSOR, "cards.list", None, reason="filter not applied")
        return cards

    def _live_card(self, cardholder_id: str) -> dict | None:
        return next(
            (
                card
                for card in self.cards(cardholder_id)
                if card.get("cardType", CARD_TYPE) == CARD_TYPE and card.get("status") != VOIDED
            ),
            None,
        )

    def request_card(self, cardholder_id: str) -> dict:
        """The cardholder's ISIC card that is not VOIDED, requesting one only if there is none.

        Each ``cards.request`` makes a card, so it is never repeated blindly: when its answer
        is lost (no answer, or 5xx) the cards are listed again, and another request goes out
        only when none appeared, under the one retry policy (``HttpClient.create_or_find``).
        When the attempts run out, the last real status is raised as retriable: the next run
        checks before it requests again.
        """
        card = self._live_card(cardholder_id)
        if card is not None:
            return card

        def created(response: requests.Response) -> dict:
            card = _json(response, "cards.request")
            if not isinstance(card, dict) or not card.get("cardNumber"):
                raise FatalError(PROCESSOR, "cards.request", response.status_code, reason="no card number")
            return card

        return self.http.create_or_find(
            "cards.request",
            lambda: self.http.request(
                "cards.request",
                "POST",
                path("cards.request"),
                json={"cardholderId": cardholder_id, "cardType": CARD_TYPE},
                idempotent=False,
                expect=(409,),
                items=1,
            ),
            lambda: self._live_card(cardholder_id),
            created,
        )

    def void_card(self, card_number: str) -> dict:
        """Set the card to VOIDED (repeating it is harmless); returns the card."""
        response = self.http.request(
            "cards.changeStatus",
            "POST",
            path("cards.changeStatus"),
            json={"cardNumber": card_number, "status": VOIDED},
            items=1,
        )
        return _json(response, "cards.changeStatus")


def from_settings(settings, session: requests.Session | None = None, **http_options) -> Isic:
    """The configured issuer account (client secret from the environment or a Secret block)."""
    own, secret, options = setup(settings, PROCESSOR, session=session, **http_options)
    return Isic.connect(own.base_url, own.client_id, secret, **options)


class IsicEraser:
    """The card issuer's cardholder (purpose ``student-id:{order}``, cardholderId = order).

    Cards are voided first, then the cardholder's deletion is asked for; the issuer deletes
    asynchronously (202) and the cardholder reads back 404 once done. (While the order is
    still in progress the catalogue's ``hold_while`` keeps the data: no call is made.)
    """

    processor = PROCESSOR
    asynchronous = True

    def _cardholder(self, target: Target) -> str:
        return target.external_id or target.purpose_arg("student-id:")

    def erase(self, client: Isic, target: Target) -> str:
        cardholder = self._cardholder(target)
        for card in client.cards(cardholder):
            if card.get("status") != VOIDED:
                client.void_card(card["cardNumber"])
        return VERIFIED if client.delete_cardholder(cardholder) == "gone" else AWAITING

    def verify(self, client: Isic, target: Target) -> bool:
        return client.deletion_verified(self._cardholder(target))


ERASER = IsicEraser()


class IsicReader:
    """What the card issuer holds for a student-ID order (purpose ``student-id:{order}``):
    the cardholder and their cards."""

    processor = PROCESSOR

    def read(self, client: Isic, target: Target) -> dict[str, Any] | None:
        cardholder_id = ERASER._cardholder(target)
        cardholder = client.get_cardholder(cardholder_id)
        if cardholder is None:
            return None
        return {"cardholder": cardholder, "cards": client.cards(cardholder_id)}


READER = IsicReader()


# Rectification and restriction (Art. 16, 18, 19; connectors/amend.py) ---------------------
def _birth_date(value: str) -> date:
    """The issuer's ``dateOfBirth`` as a date ("1990-05-17", also with a time part); a
    ValueError that never repeats the value (it is personal)."""
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise ValueError("the issuer's dateOfBirth is not a date") from None


class IsicAmender:
    """The issuer's cardholder (purpose ``student-id:{order}``): names, birth date and e-mail
    corrected with ``cardholders.set`` (create or update by ``cardholderId``), which takes the
    whole cardholder: the fields not corrected are sent as the issuer holds them. The API has
    no call that pauses a cardholder (voiding a card is final): a restriction is a letter.
    """

    processor = PROCESSOR
    can_deactivate = False
    names: Mapping[str, str] = {
        "first_name": "firstName",
        "last_name": "lastName",
        "birth_date": "dateOfBirth",
        "email": "email",
    }

    def _cardholder(self, holder: Any) -> str:
        return holder.external_id or holder.purpose_arg("student-id:")

    def read(self, client: Isic, holder: Any) -> dict[str, str] | None:
        found = client.get_cardholder(self._cardholder(holder))
        if found is None:
            return None
        held = {ours: str(found[theirs]) for ours, theirs in self.names.items() if found.get(theirs)}
        if "birth_date" in held:  # compared with ours as YYYY-MM-DD, whatever time part it carries
            held["birth_date"] = _birth_date(held["birth_date"]).isoformat()
        return held

    def update(self, client: Isic, holder: Any, changes: Mapping[str, str]) -> None:
        unknown = sorted(set(changes) - set(self.names))
        if unknown:  # refused before any call, like the allow-lists
            raise ValueError(f"field {unknown[0]} cannot be corrected at the issuer")
        found = client.get_cardholder(self._cardholder(holder))
        if found is None:
            raise ValueError("the cardholder is not there to correct")
        merged = {**found, **{self.names[name]: value for name, value in changes.items()}}
        client.set_cardholder(
            str(found["cardholderId"]),
            first_name=merged["firstName"],
            last_name=merged["lastName"],
            date_of_birth=_birth_date(str(merged["dateOfBirth"])),
            email=merged["email"],
            institution=merged["institutionName"],
            student_status=merged["studentStatus"],
        )

    def deactivate(self, client: Isic, holder: Any) -> bool:
        raise NotImplementedError("the issuer has no call to restrict a cardholder")

    def reactivate(self, client: Isic, holder: Any) -> bool:
        raise NotImplementedError("the issuer has no call to restrict a cardholder")


AMENDER = IsicAmender()
