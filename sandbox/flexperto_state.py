"""In-memory Flexperto tenant: customers, chat/recording archives, tokens.

Pure data and rules, no HTTP (the router is :mod:`sandbox.flexperto`). The
whole Flexperto contract is **assumed**; the shapes are listed in that
module's docstring. Archives belong to a customer but outlive it: deleting
a customer leaves its archives in place, so an erasure has to delete them
itself.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sandbox.common import TokenStore, bump, iso_z
from sandbox.errors import StringCodeError, string_code_error_response

# Seed 001 allows Flexperto contact data only: anything else is refused.
CUSTOMER_KEYS = frozenset({"external_id", "email", "phone"})


class FlexpertoError(StringCodeError):
    """An error answered as ``{"error": {"code": "conflict", "message": "..."}}``.

    The string code derives from the HTTP status. Messages never carry
    personal data: they end up in client logs.
    """


# Flexperto's (assumed) error shape.
flexperto_error_response = string_code_error_response


def now() -> datetime:
    """Current UTC time (module-level so tests can patch it)."""
    return datetime.now(UTC)


def _parse_at(value: object) -> datetime:
    if value is None:
        return now()
    if not isinstance(value, str):
        raise FlexpertoError(400, "at must be an ISO 8601 datetime")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise FlexpertoError(400, "at must be an ISO 8601 datetime") from None
    # A control-route convenience: a naive time is read as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _clean_customer(body: object) -> dict:
    if not isinstance(body, dict):
        raise FlexpertoError(400, "expected an object")
    unknown = sorted(set(body) - CUSTOMER_KEYS)
    if unknown:
        raise FlexpertoError(400, f"unknown fields: {', '.join(unknown)}")
    external_id = body.get("external_id")
    if not isinstance(external_id, str) or not external_id:
        raise FlexpertoError(400, "external_id is required")
    email, phone = body.get("email"), body.get("phone")
    if email is not None:
        local, at, domain = email.partition("@") if isinstance(email, str) else ("", "", "")
        if not (at and local and domain and "@" not in domain):
            raise FlexpertoError(400, "invalid email")
    if phone is not None and (not isinstance(phone, str) or not phone.strip()):
        raise FlexpertoError(400, "phone must be a non-empty string")
    return {"external_id": external_id, "email": email, "phone": phone}


class FlexpertoState:
    """The whole imitated tenant. All mutations go through these methods."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty the tenant; counters zero; all tokens revoked."""
        self.customers: dict[str, dict] = {}
        self.archives: dict[str, dict] = {}
        self._by_external: dict[str, str] = {}
        self.creates: dict[str, int] = {}  # external_id -> successful creates
        self.calls: dict[str, int] = {}
        self.tokens = TokenStore()

    # -- customers --------------------------------------------------------
    def create_customer(self, body: object) -> dict:
        """Create a customer from contact data; 409 if the external_id exists."""
        clean = _clean_customer(body)
        ext = clean["external_id"]
        if ext in self._by_external:
            raise FlexpertoError(409, "a customer with this external_id exists")
        cid = f"cus_{secrets.token_hex(8)}"
        customer = {"id": cid, **clean, "created_at": iso_z(now())}
        self.customers[cid] = customer
        self._by_external[ext] = cid
        bump(self.creates, ext)
        return customer

    def find_customers(self, external_id: str | None) -> list[dict]:
        """Customers with that external_id (zero or one), or all of them."""
        if external_id is None:
            return list(self.customers.values())
        cid = self._by_external.get(external_id)
        return [self.customers[cid]] if cid else []

    def customer(self, cid: str) -> dict:
        """A customer by id, or 404."""
        found = self.customers.get(cid)
        if found is None:
            raise FlexpertoError(404, "customer not found")
        return found

    def update_customer(self, cid: str, body: object) -> dict:
        """Correct a customer's contact data; only ``email`` and ``phone`` may change."""
        customer = self.customer(cid)
        if not isinstance(body, dict) or not body or set(body) - {"email", "phone"}:
            raise FlexpertoError(400, "only email and phone may be changed")
        clean = _clean_customer({"external_id": customer["external_id"], **body})
        customer.update({key: clean[key] for key in body})
        return customer

    def delete_customer(self, cid: str) -> None:
        """Delete a customer; its archives stay."""
        customer = self.customer(cid)
        del self.customers[cid]
        del self._by_external[customer["external_id"]]

    # -- archives ---------------------------------------------------------
    def find_archives(self, customer_id: str | None) -> list[dict]:
        """A customer's archives (also after the customer is gone), or all."""
        return [a for a in self.archives.values() if customer_id is None or a["customer_id"] == customer_id]

    def archive(self, aid: str) -> dict:
        """An archive by id, or 404."""
        found = self.archives.get(aid)
        if found is None:
            raise FlexpertoError(404, "archive not found")
        return found

    def delete_archive(self, aid: str) -> None:
        """Delete one archive, or 404."""
        self.archive(aid)
        del self.archives[aid]

    def hold_chat(self, body: object) -> list[dict]:
        """Simulate a held video consultation: one chat and one recording archive."""
        if not isinstance(body, dict) or not isinstance(body.get("customer_id"), str):
            raise FlexpertoError(400, "customer_id is required")
        customer = self.customer(body["customer_id"])
        created_at = iso_z(_parse_at(body.get("at")))
        made = []
        for kind in ("chat", "recording"):
            aid = f"arc_{secrets.token_hex(8)}"
            archive = {"id": aid, "customer_id": customer["id"], "kind": kind, "created_at": created_at}
            self.archives[aid] = archive
            made.append(archive)
        return made

    # -- control ----------------------------------------------------------
    def snapshot(self) -> dict:
        """State for ``GET /_sandbox/state``; shares live objects (no copies)."""
        return {
            "customers": self.customers,
            "archives": self.archives,
            "creates": self.creates,
            "calls": self.calls,
            "tokens": self.tokens.issued,
        }
