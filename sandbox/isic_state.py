"""In-memory ISIC card-issuer account: cardholders, photos, cards, deletions, tokens.

Pure data and rules, no HTTP (the router and the whole ASSUMED contract are in
:mod:`sandbox.isic`). Three rules carry the point of this imitation:

- ``cards.request`` is not idempotent: every call makes a new card, counted in
  ``creates["cards"]`` so a test can assert "exactly one card".
- A card copies ``hasPhoto`` when it is made; a photo set later never reaches it.
- Erasure is asynchronous: a deletion is pending until the second
  ``cardholders.get`` after the request (or the control route) completes it.

Photos are kept as size, sha256 and detected type only, never the bytes: the
sandbox holds no more personal data than a test needs to check what arrived.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, date, datetime

from sandbox.common import AsyncDeletions, TokenStore, bump, iso_z
from sandbox.errors import ApiError

CARDHOLDER_KEYS = (
    "cardholderId",
    "firstName",
    "lastName",
    "dateOfBirth",
    "email",
    "institutionName",
    "studentStatus",
)
STUDENT_STATUSES = frozenset({"student", "pupil"})
CARD_TYPE = "ISIC"
PENDING, ACTIVE, VOIDED = "PENDING", "ACTIVE", "VOIDED"
PHOTO_MAX_BYTES = 2 * 1024 * 1024
# Magic bytes decide what a photo is; a declared type is only checked against them.
PHOTO_MAGIC = {"image/jpeg": b"\xff\xd8\xff", "image/png": b"\x89PNG\r\n\x1a\n"}
# A label that says nothing about the bytes is tolerated; a wrong image label is not.
NEUTRAL_TYPES = frozenset({None, "", "application/octet-stream"})
# Gets answered after a delete before it completes: the first still shows "pending".
GETS_UNTIL_DELETED = 2

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def now() -> datetime:
    """Current UTC time (module-level so tests can patch it)."""
    return datetime.now(UTC)


def one_year_later(day: date) -> date:
    """The same calendar day a year on (29 February becomes 28 February)."""
    try:
        return day.replace(year=day.year + 1)
    except ValueError:
        return day.replace(year=day.year + 1, day=28)


def _object(body: object, allowed: tuple[str, ...]) -> dict:
    """The body as a dict with only ``allowed`` keys, every one of them a non-empty string."""
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        # Key names only: values may be personal data and end up in client logs.
        raise ApiError(400, f"unknown fields: {', '.join(unknown)}")
    missing = [k for k in allowed if not isinstance(body.get(k), str) or not body[k].strip()]
    if missing:
        raise ApiError(400, f"missing or empty fields: {', '.join(missing)}")
    return {k: body[k] for k in allowed}


def _clean_cardholder(body: object) -> dict:
    clean = _object(body, CARDHOLDER_KEYS)
    try:
        if not _DATE.fullmatch(clean["dateOfBirth"]):
            raise ValueError
        born = date.fromisoformat(clean["dateOfBirth"])
    except ValueError:
        raise ApiError(400, "dateOfBirth must be a date YYYY-MM-DD") from None
    if born > now().date():
        raise ApiError(400, "dateOfBirth lies in the future")
    local, at, domain = clean["email"].partition("@")
    if not (at and local and "." in domain and "@" not in domain):
        raise ApiError(400, "invalid email")
    if clean["studentStatus"] not in STUDENT_STATUSES:
        raise ApiError(400, "studentStatus must be student or pupil")
    return clean


def photo_type(data: bytes, declared: str | None) -> str:
    """The photo's type from its magic bytes; 415 when it is neither JPEG nor PNG.

    >>> photo_type(b"\\xff\\xd8\\xff\\xe0rest", "image/jpeg")
    'image/jpeg'
    """
    detected = next((kind for kind, magic in PHOTO_MAGIC.items() if data.startswith(magic)), None)
    if detected is None:
        raise ApiError(415, "photo must be a JPEG or PNG image")
    if declared not in NEUTRAL_TYPES and declared != detected:
        raise ApiError(415, "photo content type does not match its bytes")
    return detected


class IsicState:
    """The whole imitated issuer account. All mutations go through these methods."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty account; counters zero; all tokens revoked."""
        # Records as stored: the API fields plus "photo" (size/sha256/type or None).
        self.cardholders: dict[str, dict] = {}
        self.cards: dict[str, dict] = {}
        self.creates: dict[str, dict[str, int]] = {"cardholders": {}, "cards": {}}
        self.calls: dict[str, int] = {}
        self.order: list[list[str | None]] = []
        self.deletions = AsyncDeletions(self._remove, GETS_UNTIL_DELETED)
        self.tokens = TokenStore()

    # -- request log ------------------------------------------------------
    def log_order(self, key: str, body: object) -> None:
        """Append ``[route, cardholderId]``: whom the request was about, as it arrived.

        For ``cards.changeStatus`` that is the card's owner (None for an unknown card).
        """
        subject = None
        if isinstance(body, dict):
            subject = body.get("cardholderId")
            if subject is None and isinstance(body.get("cardNumber"), str):
                subject = self.cards.get(body["cardNumber"], {}).get("cardholderId")
        self.order.append([key, subject if isinstance(subject, str) else None])

    # -- cardholders ------------------------------------------------------
    def view(self, record: dict) -> dict:
        """The API's cardholder: stored fields, ``hasPhoto`` and ``deletionPending``."""
        fields = {k: record[k] for k in CARDHOLDER_KEYS}
        return {
            **fields,
            "hasPhoto": record["photo"] is not None,
            "deletionPending": record["cardholderId"] in self.deletions.pending,
            "createdAt": record["createdAt"],
            "updatedAt": record["updatedAt"],
        }

    def _record(self, cardholder_id: str) -> dict:
        record = self.cardholders.get(cardholder_id)
        if record is None:
            raise ApiError(404, "cardholder not found")
        return record

    def _live_record(self, cardholder_id: str) -> dict:
        # A cardholder being erased takes no new data: it would outlive the erasure's intent.
        record = self._record(cardholder_id)
        if cardholder_id in self.deletions.pending:
            raise ApiError(409, "cardholder deletion is pending")
        return record

    def set_cardholder(self, body: object) -> dict:
        """Create or update by cardholderId; a repeat with the same data changes nothing."""
        clean = _clean_cardholder(body)
        cid = clean["cardholderId"]
        record = self.cardholders.get(cid)
        stamp = iso_z(now())
        if record is None:
            record = {**clean, "photo": None, "createdAt": stamp, "updatedAt": stamp}
            self.cardholders[cid] = record
            bump(self.creates["cardholders"], cid)
        else:
            self._live_record(cid)
            if any(record[k] != v for k, v in clean.items()):
                record.update(clean, updatedAt=stamp)
        return self.view(record)

    def set_photo(self, cardholder_id: str, data: bytes, declared: str | None) -> dict:
        """Store the photo's size, sha256 and type (replacing any earlier one)."""
        record = self._live_record(cardholder_id)
        # Size first: a real gateway refuses an oversized upload before looking inside.
        if len(data) > PHOTO_MAX_BYTES:
            raise ApiError(413, f"photo larger than {PHOTO_MAX_BYTES} bytes")
        kind = photo_type(data, declared)
        record["photo"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "contentType": kind}
        record["updatedAt"] = iso_z(now())
        return {"cardholderId": cardholder_id, "hasPhoto": True}

    def get_cardholder(self, body: object) -> dict:
        """The cardholder; the second get after a delete completes it and answers 404."""
        cid = _object(body, ("cardholderId",))["cardholderId"]
        record = self._record(cid)
        if self.deletions.read(cid):
            raise ApiError(404, "cardholder not found")
        return self.view(record)

    def delete_cardholder(self, body: object) -> dict:
        """Accept an erasure (202 pending); asking again while pending changes nothing."""
        cid = _object(body, ("cardholderId",))["cardholderId"]
        self._record(cid)
        self.deletions.request(cid)
        return {"cardholderId": cid, "status": "pending"}

    def _remove(self, cardholder_id: str) -> None:
        del self.cardholders[cardholder_id]
        for number in [n for n, card in self.cards.items() if card["cardholderId"] == cardholder_id]:
            del self.cards[number]

    def complete_deletions(self) -> list[str]:
        """Complete every pending deletion now; return the cardholder ids."""
        return self.deletions.complete_all()

    # -- cards ------------------------------------------------------------
    def _card_number(self) -> str:
        while True:
            number = f"S{secrets.randbelow(10**12):012d}"
            if number not in self.cards:
                return number

    def request_card(self, body: object) -> dict:
        """Make a new PENDING card; it has a photo only if the cardholder has one now."""
        clean = _object(body, ("cardholderId", "cardType"))
        if clean["cardType"] != CARD_TYPE:
            raise ApiError(400, "cardType must be ISIC")
        cid = clean["cardholderId"]
        record = self._live_record(cid)
        moment = now()
        valid_from = moment.date()
        card = {
            "cardNumber": self._card_number(),
            "cardholderId": cid,
            "cardType": CARD_TYPE,
            "status": PENDING,
            "hasPhoto": record["photo"] is not None,
            "validFrom": valid_from.isoformat(),
            "validTo": one_year_later(valid_from).isoformat(),
            "createdAt": iso_z(moment),
        }
        self.cards[card["cardNumber"]] = card
        bump(self.creates["cards"], cid)
        return card

    def list_cards(self, body: object) -> dict:
        """All cards of a cardholder, any status; an unknown cardholder has none."""
        cid = _object(body, ("cardholderId",))["cardholderId"]
        return {"cards": [card for card in self.cards.values() if card["cardholderId"] == cid]}

    def _card(self, number: str) -> dict:
        card = self.cards.get(number)
        if card is None:
            raise ApiError(404, "card not found")
        return card

    def change_status(self, body: object) -> dict:
        """Void a card; voiding a voided card is a no-op. Nothing else may be set."""
        clean = _object(body, ("cardNumber", "status"))
        if clean["status"] != VOIDED:
            raise ApiError(400, "status may only be set to VOIDED")
        card = self._card(clean["cardNumber"])
        card["status"] = VOIDED
        return card

    def issue(self, body: object) -> list[str]:
        """The platform produced cards: the given one, or every PENDING one, turns ACTIVE."""
        if body is None or body == {}:
            numbers = [n for n, card in self.cards.items() if card["status"] == PENDING]
        else:
            card = self._card(_object(body, ("cardNumber",))["cardNumber"])
            if card["status"] == VOIDED:
                raise ApiError(409, "card is voided")
            numbers = [card["cardNumber"]]
        for number in numbers:
            self.cards[number]["status"] = ACTIVE
        return numbers

    # -- control ----------------------------------------------------------
    def snapshot(self) -> dict:
        """State for ``GET /_sandbox/state``; shares live objects (no copies)."""
        return {
            "cardholders": self.cardholders,
            "cards": self.cards,
            "creates": self.creates,
            "calls": self.calls,
            "order": self.order,
            "deletions": self.deletions.snapshot(),
            "tokens": self.tokens.issued,
        }
