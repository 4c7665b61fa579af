"""Flexperto: video consultations booked through TIMIFY (seed 001).

- Base URL setting: ``PSYNC_FLEXPERTO_BASE_URL`` (the tenant's host root,
  ``https://{tenant}.live.flexperto.com``; ``/api/v2/...`` hangs below it).
  Sandbox: ``http://127.0.0.1:8700/flexperto``.
- Auth: OAuth2 client credentials at ``/api/v2/oauth/token`` (HTTP Basic
  ``client_id:client_secret``, form ``grant_type=client_credentials``) → ``{access_token,
  token_type, expires_in}``; ``Authorization: Bearer``; a 401 fetches a new token once.
- Fields it may receive: ``ALLOWED_FIELDS`` — seed 001 names only "Kontaktdaten (Telefon,
  E-Mail)", plus our pseudonymous ``external_id``.
- Create: the contact data are set when the customer is created and never updated: a repeat
  (409, or a lost answer) finds the existing customer by ``external_id`` and uses it as it is.
- Erasure: the API does not cascade, so ``purge`` deletes every chat/recording archive, then
  the customer, and verifies by reading back (customer 404, no archives). Seed 001: chat data
  are gone at the latest 90 days after the chat.

ASSUMED (nothing public; change here when the real contract is known): every path and shape.

- ``POST /api/v2/customers {"external_id", "email"?, "phone"?}`` → the customer ``{"id", ...}``;
  a second one with the same ``external_id`` → 409.
- ``GET /api/v2/customers?external_id=`` → ``{"items": [customer]}``;
  ``GET|DELETE /api/v2/customers/{id}`` (404 when gone).
- ``GET /api/v2/archives?customer_id=`` → ``{"items": [{"id", "customer_id", ...}]}``, all of
  them in one answer; ``DELETE /api/v2/archives/{id}`` → 204 (404 when gone).
- Plain JSON bodies, no envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
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

PROCESSOR = "flexperto"
# The allow-list, as the catalogue declares it for this purpose.
ALLOWED_FIELDS = catalogue.allowed_fields(PROCESSOR, "video:")


def check_allowed(fields: Mapping[str, Any]) -> None:
    """Raise ValueError naming the field when `fields` holds anything Flexperto may not get.

    >>> check_allowed({"external_id": "p-1", "insurance_number": "A123456780"})
    Traceback (most recent call last):
    ...
    ValueError: field insurance_number is not allowed for Flexperto
    """
    refuse_unlisted(fields, ALLOWED_FIELDS, "Flexperto")


class Flexperto:
    """One Flexperto tenant. Plain methods; results are the API's JSON, errors the two kinds."""

    def __init__(self, http: HttpClient):
        self.http = http

    @classmethod
    def connect(cls, base_url: str, client_id: str, client_secret: str, **http_options: Any) -> Flexperto:
        """Build the client with token auth against the tenant's token endpoint."""
        root = base_url.rstrip("/")

        def fetch(plain: HttpClient) -> tuple[str, float]:
            response = plain.request(
                "auth.token",
                "POST",
                path("api", "v2", "oauth", "token"),
                auth=(client_id, client_secret),
                data={"grant_type": "client_credentials"},
            )
            body = response.json()
            if not body.get("access_token"):
                raise FatalError(PROCESSOR, "auth.token", response.status_code, reason="no token")
            return body["access_token"], float(body.get("expires_in", 3600))

        http = token_client(PROCESSOR, root, fetch, **http_options)
        return cls(http)

    # customers ----------------------------------------------------------------------
    def upsert_customer(self, external_id: str, email: str | None, phone: str | None) -> str:
        """The customer's Flexperto id, creating the customer unless it exists.

        Never creates twice: after a 409 or a lost answer the customer is looked up by
        ``external_id`` first, and created again only when it is certainly not there.
        """
        body = {"external_id": external_id, "email": email, "phone": phone}
        body = {key: value for key, value in body.items() if value is not None}
        check_allowed(body)

        def find() -> str | None:
            found = self.find_customer(external_id)
            return str(found["id"]) if found is not None else None

        return self.http.create_or_find(
            "customers.create",
            lambda: self.http.request(
                "customers.create",
                "POST",
                path("api", "v2", "customers"),
                json=body,
                idempotent=False,
                expect=(409,),
                items=1,
            ),
            find,
            lambda response: str(response.json()["id"]),
        )

    def find_customer(self, external_id: str) -> dict | None:
        """The customer with our `external_id`, or None."""
        items = self.http.request(
            "customers.lookup",
            "GET",
            path("api", "v2", "customers"),
            params={"external_id": external_id},
        ).json()["items"]
        # Matched here too: a server that ignored the filter must not hand us a stranger.
        return next((c for c in items if str(c.get("external_id")) == external_id), None)

    def get_customer(self, customer_id: str) -> dict | None:
        """The customer, or None when Flexperto does not hold it."""
        response = self.http.request("customers.get", "GET", path("api", "v2", "customers", customer_id), expect=(404,))
        return None if response.status_code == 404 else response.json()

    def delete_customer(self, customer_id: str) -> bool:
        """Delete the customer record only (archives stay: see ``purge``). False if gone."""
        response = self.http.request(
            "customers.delete",
            "DELETE",
            path("api", "v2", "customers", customer_id),
            expect=(404,),
        )
        return response.status_code != 404

    # archives -----------------------------------------------------------------------
    def archives(self, customer_id: str) -> list[dict]:
        """The customer's chat and recording archives."""
        items = self.http.request(
            "archives.list", "GET", path("api", "v2", "archives"), params={"customer_id": customer_id}
        ).json()["items"]
        # Deleting what a server returned for an ignored filter would erase other people's data.
        for item in items:
            if "customer_id" in item and str(item["customer_id"]) != str(customer_id):
                raise FatalError(PROCESSOR, "archives.list", None, reason="filter not applied")
        return items

    def delete_archive(self, archive_id: str) -> bool:
        """Delete one archive. False when it was already gone."""
        response = self.http.request(
            "archives.delete",
            "DELETE",
            path("api", "v2", "archives", archive_id),
            expect=(404,),
        )
        return response.status_code != 404

    def purge(self, customer_id: str) -> bool:
        """Delete the customer and all their archives; True only when read back as gone.

        The caller records the erasure only on True; False means try again later.

        Example::

            if not flexperto.purge(customer_id):
                ...  # leave the erasure open; the next run tries again
        """
        for archive in self.archives(customer_id):
            self.delete_archive(archive["id"])
        self.delete_customer(customer_id)
        return self.get_customer(customer_id) is None and not self.archives(customer_id)


def from_settings(settings, session: requests.Session | None = None, **http_options) -> Flexperto:
    """The configured tenant (client secret from the environment or a Secret block)."""
    own, secret, options = setup(settings, PROCESSOR, session=session, **http_options)
    return Flexperto.connect(own.base_url, own.client_id, secret, **options)


class FlexpertoEraser:
    """A video consultation's customer, chats and recordings (purpose ``video:{booking}``)."""

    processor = PROCESSOR
    asynchronous = False

    def _customer_id(self, client: Flexperto, target: Target) -> str | None:
        if target.external_id:
            return target.external_id
        found = client.find_customer(target.purpose_arg("video:"))
        return str(found["id"]) if found else None

    def erase(self, client: Flexperto, target: Target) -> str:
        customer = self._customer_id(client, target)
        if customer is None or client.purge(customer):
            return VERIFIED
        return AWAITING

    def verify(self, client: Flexperto, target: Target) -> bool:
        customer = self._customer_id(client, target)
        return customer is None or (client.get_customer(customer) is None and not client.archives(customer))


ERASER = FlexpertoEraser()


class FlexpertoReader:
    """What Flexperto holds for a video consultation (purpose ``video:{booking}``): the
    customer and the list of its chat and recording archives."""

    processor = PROCESSOR

    def read(self, client: Flexperto, target: Target) -> dict[str, Any] | None:
        customer_id = ERASER._customer_id(client, target)
        if customer_id is None:
            return None
        customer = client.get_customer(customer_id)
        archives = client.archives(customer_id)
        if customer is None and not archives:
            return None
        return {"customer": customer, "archives": archives}


READER = FlexpertoReader()


# Rectification and restriction (Art. 16, 18, 19; connectors/amend.py) ---------------------
class FlexpertoAmender:
    """A video consultation's customer (purpose ``video:{booking}``): e-mail and phone only,
    corrected with ``PATCH /api/v2/customers/{id} {"email"?, "phone"?}`` (ASSUMED, like every
    Flexperto path). No call stops processing without deleting: a restriction is a letter.
    """

    processor = PROCESSOR
    can_deactivate = False
    names: Mapping[str, str] = {"email": "email", "phone": "phone"}

    def _customer(self, client: Flexperto, holder: Any) -> dict | None:
        if holder.external_id:
            return client.get_customer(holder.external_id)
        return client.find_customer(holder.purpose_arg("video:"))

    def read(self, client: Flexperto, holder: Any) -> dict[str, str] | None:
        customer = self._customer(client, holder)
        if customer is None:
            return None
        return {name: str(customer[name]) for name in self.names if customer.get(name)}

    def update(self, client: Flexperto, holder: Any, changes: Mapping[str, str]) -> None:
        unknown = sorted(set(changes) - set(self.names))
        if unknown:  # refused before any call, like the allow-lists
            raise ValueError(f"field {unknown[0]} cannot be corrected at Flexperto")
        customer = self._customer(client, holder)
        if customer is None:
            raise ValueError("the customer is not there to correct")
        body = {self.names[name]: value for name, value in changes.items()}
        check_allowed(body)
        client.http.request(
            "customers.update", "PATCH", path("api", "v2", "customers", str(customer["id"])), json=body, items=1
        )

    def deactivate(self, client: Flexperto, holder: Any) -> bool:
        raise NotImplementedError("Flexperto has no call to restrict a customer")

    def reactivate(self, client: Flexperto, holder: Any) -> bool:
        raise NotImplementedError("Flexperto has no call to restrict a customer")


AMENDER = FlexpertoAmender()
