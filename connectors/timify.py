"""TIMIFY DevAPI: online bookings for the service points and video chats (seed 001).

- Base URL setting: ``PSYNC_TIMIFY_BASE_URL`` (API root; ``/v1/...`` hangs below it).
  Sandbox: ``http://127.0.0.1:8700/timify``.
- Auth: ``POST /v1/auth/token {"appid","appsecret"}`` → ``{accessToken, expires (s),
  refreshToken}``; the token is the raw value of the ``authorization`` header (no
  ``Bearer``). A 401 fetches a new token once (``refreshToken`` is not used: a fresh token
  from the app credentials does the same with one endpoint less). Every call, the token call
  included, carries ``company-id``.
- Envelope: ``{"data": ..., "status": 1}``; lists add ``total`` and ``meta {page, limit,
  totalItems, totalPages}``, pages 1-based. A 2xx whose ``status`` is not 1 is a FatalError.
- Endpoints: ``GET /v1/customers/customfields``; ``POST /v1/customers``,
  ``GET|PATCH|DELETE /v1/customers/{id}[?external=1]``; ``POST /v1/appointments``,
  ``GET|PATCH /v1/appointments/{id}[?external=1]``, ``GET /v1/appointments?from_date&to_date``
  (span ≤ 365 days), ``POST /v1/appointments/delete/bulk {"ids", "has_notify_customers"}``.
- Fields it may receive: ``ALLOWED_FIELDS`` (seed 001's list; the concern, "Beratungsanliegen",
  travels as appointment ``notes``). Personal data go as ``customfields [{id, value}]``;
  of insurance number and birth date only one, the number when both are given.
- Create-or-update: a create carries our ``externalId``; TIMIFY refuses a second one with 409.
  After a 409, or when the answer to a create was lost, the record is addressed by our id
  (``?external=1``) before anything is created again, so nothing is created twice.
- Erasure: ``DELETE /v1/customers/{id}`` and the bulk appointment delete; verified by
  ``get_customer`` / ``get_appointment`` → None (404).

ASSUMED (nothing public; change here when the real contract is known):

- ``/v1/auth/token`` answers unwrapped (an enveloped answer is accepted as well).
- Error body ``{"status": 0, "error": {"code", "message"}}``; a duplicate ``externalId`` → 409.
- ``PATCH`` for updates, with the create body minus ``externalId``; answers the object.
- ``DELETE /v1/customers/{id}[?external=1]``; deleted records answer 404.
- ``GET /v1/customers`` pages like appointments; ``from_date``/``to_date`` are ``YYYY-MM-DD``.
- Customer field definitions beyond email/firstName/lastName (recorded): see ``FIELD_KEYS``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import requests

from connectors.erasure import VERIFIED, NotVerified, Target
from connectors.transport import (
    EncodedPath,
    FatalError,
    HttpClient,
    path,
    refuse_unlisted,
    setup,
    token_client,
)
from core import catalogue

# The booking intake checks a start with this same function, so it never takes in a start
# the push refuses. models.types is the bottom layer; nothing in models imports connectors.
from core.clock import berlin_wall_clock

PROCESSOR = "timify"
PAGE_SIZE = 100
DELETE_BATCH = 100
MAX_SPAN = timedelta(days=365)

# The allow-list, as the catalogue declares it for this purpose.
ALLOWED_FIELDS = catalogue.allowed_fields(PROCESSOR, "booking")

# Our field name -> how its definition is found in GET /v1/customers/customfields: basic
# fields by translationKey, the company's own field by its label (its translationKey is null).
FIELD_KEYS: Mapping[str, tuple[str, str]] = {
    "email": ("translationKey", "customerFields.basic.email"),
    "first_name": ("translationKey", "customerFields.basic.firstName"),
    "last_name": ("translationKey", "customerFields.basic.lastName"),
    "phone": ("translationKey", "customerFields.basic.mobilePhone"),
    "birth_date": ("translationKey", "customerFields.basic.birthday"),
    "salutation": ("translationKey", "customerFields.basic.salutation"),
    "insurance_number": ("label", "Krankenversichertennummer"),
}

_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# The create paths, built once: a push creates two records a booking. (The path by our own
# id is built only when a create needs the lookup.)
_COLLECTIONS = {kind: path("v1", kind) for kind in ("customers", "appointments")}


def check_allowed(fields: Mapping[str, Any]) -> None:
    """Raise ValueError naming the field when `fields` holds anything TIMIFY may not get.

    >>> check_allowed({"email": "a@b.de", "concern": "Zahnersatz"})
    Traceback (most recent call last):
    ...
    ValueError: field concern is not allowed for TIMIFY customers
    """
    refuse_unlisted(fields, ALLOWED_FIELDS, "TIMIFY customers")


def one_identifier(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The customer's fields with one identifier: the insurance number if given, else the
    birth date.

    Seed 001 identifies a customer by the insurance number or the birth date. The number is
    unique and the birth date is not, so with both given TIMIFY gets the number only: the
    least data that does the job (Art. 5(1)(c) GDPR).

    >>> one_identifier({"email": "a@b.de", "insurance_number": "A123456780",
    ...                 "birth_date": date(1980, 5, 17)})
    {'email': 'a@b.de', 'insurance_number': 'A123456780'}
    """
    if fields.get("insurance_number"):
        return {name: value for name, value in fields.items() if name != "birth_date"}
    return dict(fields)


def berlin_start(dt: datetime) -> str:
    """TIMIFY's ``startDate``: Berlin wall-clock time on the 5-minute grid.

    ValueError for a start off the grid or in the hour that happens twice when the clocks
    go back: the same check (``core.clock.berlin_wall_clock``) the booking intake makes,
    so a booking that was taken in can always be sent.

    >>> berlin_start(datetime(2026, 3, 29, 8, 0, tzinfo=UTC))
    '2026-03-29 10:00'
    >>> berlin_start(datetime(2026, 3, 29, 8, 3, tzinfo=UTC))
    Traceback (most recent call last):
    ...
    ValueError: start must lie on the 5-minute grid
    """
    try:
        local = berlin_wall_clock(dt)
    except ValueError as exc:
        # Named like intake's reasons ("start: ..."): a parked booking or a failed run shows it.
        raise ValueError(f"start {exc}") from None
    return local.strftime("%Y-%m-%d %H:%M")


def parse_utc(value: str) -> datetime:
    """TIMIFY's timestamps (``"2024-04-04T07:05:00Z"``) as aware UTC datetimes."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp without an offset")
    return parsed.astimezone(UTC)


def _birth_date(value: date | str) -> str:
    if isinstance(value, datetime):
        raise ValueError("birth_date must be a date, not a datetime")
    return (value if isinstance(value, date) else date.fromisoformat(value)).isoformat()


class Timify:
    """One TIMIFY company. Plain methods; results are the API's ``data``, errors the two kinds."""

    def __init__(self, http: HttpClient, company_id: str):
        self.http = http
        self.headers = {"company-id": company_id}
        self._field_ids: dict[str, str] | None = None
        # A batch's workers share this connector: the field list is fetched by one of them.
        self._field_lock = threading.Lock()

    @classmethod
    def connect(cls, base_url: str, app_id: str, app_secret: str, company_id: str, **http_options: Any) -> Timify:
        """Build the client with token auth against the base URL's token endpoint."""
        root = base_url.rstrip("/")

        def fetch(plain: HttpClient) -> tuple[str, float]:
            response = plain.request(
                "auth.token",
                "POST",
                path("v1", "auth", "token"),
                json={"appid": app_id, "appsecret": app_secret},
                headers={"company-id": company_id},
            )
            body = response.json()
            body = body["data"] if isinstance(body.get("data"), dict) else body
            if not body.get("accessToken"):
                raise FatalError(PROCESSOR, "auth.token", response.status_code, reason="no token")
            return body["accessToken"], float(body.get("expires", 3600))

        # TIMIFY takes the raw token in `authorization`, no "Bearer ".
        http = token_client(PROCESSOR, root, fetch, header="authorization", prefix="", **http_options)
        return cls(http, company_id)

    # plumbing -----------------------------------------------------------------------
    def _call(self, op: str, method: str, where: EncodedPath, **kwargs: Any) -> requests.Response:
        return self.http.request(op, method, where, headers=self.headers, **kwargs)

    def _envelope(self, response: requests.Response, op: str) -> dict:
        """The whole checked envelope; ``status`` must be 1 even on a 2xx."""
        try:
            body = response.json()
        except ValueError:
            raise FatalError(PROCESSOR, op, response.status_code, reason="not JSON") from None
        if not isinstance(body, dict) or body.get("status") != 1:
            error = body.get("error") if isinstance(body, dict) else None
            code = str(error.get("code", "")) if isinstance(error, dict) else ""
            # Only a code that looks like one: the message may quote personal data.
            reason = f"envelope status not 1 ({code if _CODE.match(code) else 'no code'})"
            raise FatalError(PROCESSOR, op, response.status_code, reason=reason)
        return body

    def _data(self, response: requests.Response, op: str) -> Any:
        return self._envelope(response, op).get("data")

    def _id(self, response: requests.Response, op: str) -> str:
        data = self._data(response, op)
        if not isinstance(data, dict) or not data.get("id"):
            raise FatalError(PROCESSOR, op, response.status_code, reason="no id in answer")
        return str(data["id"])

    def _get(self, kind: str, record_id: str, external: bool) -> dict | None:
        response = self._call(
            f"{kind}.get",
            "GET",
            path("v1", kind, record_id),
            params={"external": 1} if external else None,
            expect=(404,),
        )
        return None if response.status_code == 404 else self._data(response, f"{kind}.get")

    def _pages(
        self, op: str, where: EncodedPath, params: Mapping[str, Any], page_size: int, max_pages: int
    ) -> Iterator[dict]:
        """Page 1, 2, ... until ``totalPages``, a short page or an empty one."""
        for page in range(1, max_pages + 1):
            response = self._call(op, "GET", where, params={**params, "page": page, "limit": page_size})
            body = self._envelope(response, op)
            rows, meta = body.get("data") or [], body.get("meta") or {}
            yield from rows
            # "Short" against the limit the server applied: it may cap ours.
            short = len(rows) < (meta.get("limit") or page_size)
            if short or ("totalPages" in meta and page >= meta["totalPages"]):
                return
        raise FatalError(PROCESSOR, op, None, reason="page limit reached")

    def _upsert(self, kind: str, external_id: str, create: dict, update: dict, record_id: str | None) -> str:
        """Update by TIMIFY id when known; else create, checking by our id before a repeat."""
        if record_id is not None:
            response = self._call(f"{kind}.update", "PATCH", path("v1", kind, record_id), json=update)
            return self._id(response, f"{kind}.update")

        def create_once():
            return self._call(
                f"{kind}.create", "POST", _COLLECTIONS[kind], json=create, idempotent=False, expect=(409,), items=1
            )

        def find():
            # One PATCH by our id finds and updates it. Should a lost create surface late
            # after a repeat, TIMIFY refuses the duplicate externalId: it never lands twice.
            found = self._call(
                f"{kind}.lookup",
                "PATCH",
                path("v1", kind, external_id),
                params={"external": 1},
                json=update,
                expect=(404,),
            )
            return None if found.status_code == 404 else self._id(found, f"{kind}.lookup")

        return self.http.create_or_find(
            f"{kind}.create", create_once, find, lambda response: self._id(response, f"{kind}.create")
        )

    # customers ----------------------------------------------------------------------
    def field_ids(self) -> dict[str, str]:
        """Our field name -> TIMIFY customfield id, fetched once per connector."""
        if self._field_ids is not None:
            return self._field_ids
        with self._field_lock:
            return self._fetch_field_ids()

    def _fetch_field_ids(self) -> dict[str, str]:
        if self._field_ids is None:
            definitions = list(
                self._pages("customfields.list", path("v1", "customers", "customfields"), {}, PAGE_SIZE, 100)
            )
            ids = {}
            for name, (key, wanted) in FIELD_KEYS.items():
                for definition in definitions:
                    if definition.get(key) == wanted:
                        ids[name] = definition["id"]
                        break
            self._field_ids = ids
        return self._field_ids

    def _customfields(self, fields: Mapping[str, Any]) -> list[dict]:
        """``[{id, value}]`` for the given fields; None values are left out, not blanked."""
        check_allowed(fields)
        given = {name: value for name, value in fields.items() if value is not None}
        if not given:
            return []
        ids = self.field_ids()
        items = []
        for name, value in given.items():
            if name not in ids:
                # Dropping it would lose data silently: the company lacks the field.
                raise FatalError(PROCESSOR, "customfields.map", None, reason=f"no field {name}")
            text = _birth_date(value) if name == "birth_date" else str(value)
            items.append({"id": ids[name], "value": text})
        return items

    def upsert_customer(self, external_id: str, fields: Mapping[str, Any], customer_id: str | None = None) -> str:
        """Create or update one customer; returns TIMIFY's customer id.

        Fields that are None are not sent, and of insurance number and birth date only one
        is (``one_identifier``).

        Example::

            tid = timify.upsert_customer("p-4f2a", {"email": "erika@example.de",
                                                    "birth_date": date(1980, 5, 17)})
        """
        customfields = self._customfields(one_identifier(fields))
        update = {"customfields": customfields}
        create = {"externalId": external_id, **update}
        return self._upsert("customers", external_id, create, update, customer_id)

    def get_customer(self, customer_id: str, external: bool = False) -> dict | None:
        """The customer, or None when TIMIFY does not hold it."""
        return self._get("customers", customer_id, external)

    def iter_customers(self, page_size: int = PAGE_SIZE, max_pages: int = 10_000) -> Iterator[dict]:
        """Every customer of the company."""
        return self._pages("customers.list", path("v1", "customers"), {}, page_size, max_pages)

    def delete_customer(self, customer_id: str, external: bool = False) -> bool:
        """Erase the customer. False when it was already gone."""
        response = self._call(
            "customers.delete",
            "DELETE",
            path("v1", "customers", customer_id),
            params={"external": 1} if external else None,
            expect=(404,),
        )
        if response.status_code == 404:
            return False
        if response.content:
            self._envelope(response, "customers.delete")
        return True

    # appointments -------------------------------------------------------------------
    def upsert_appointment(
        self,
        external_id: str,
        *,
        service_id: str,
        resource_ids: Sequence[str],
        start: datetime,
        duration_min: int,
        customer_id: str,
        notes: str | None = None,
        appointment_id: str | None = None,
    ) -> str:
        """Create or update one appointment; returns TIMIFY's appointment id."""
        update: dict[str, Any] = {
            "service_id": service_id,
            "resource_ids": list(resource_ids),
            "startDate": berlin_start(start),
            "duration": duration_min,
            "customers": [customer_id],
        }
        if notes is not None:
            update["notes"] = notes
        create = {"externalId": external_id, **update}
        return self._upsert("appointments", external_id, create, update, appointment_id)

    def get_appointment(self, appointment_id: str, external: bool = False) -> dict | None:
        """The appointment, or None when TIMIFY does not hold it."""
        return self._get("appointments", appointment_id, external)

    def iter_appointments(
        self, from_date: date, to_date: date, page_size: int = PAGE_SIZE, max_pages: int = 10_000
    ) -> Iterator[dict]:
        """Appointments between two days, in windows of at most 365 days.

        Windows share their boundary day, since whether ``to_date`` is inclusive is not
        known; an appointment both windows return is yielded once. Collect ids before
        deleting: deleting while iterating shifts the pages under the iterator.
        """
        if to_date < from_date:
            raise ValueError("to_date before from_date")
        start, previous = from_date, set()
        while True:
            end = min(start + MAX_SPAN, to_date)
            params = {"from_date": f"{start:%Y-%m-%d}", "to_date": f"{end:%Y-%m-%d}"}
            seen = set()
            for row in self._pages("appointments.list", path("v1", "appointments"), params, page_size, max_pages):
                seen.add(row["id"])
                if row["id"] not in previous:
                    yield row
            if end >= to_date:
                return
            start, previous = end, seen

    def delete_appointments(self, ids: Iterable[str], notify_customers: bool = False) -> int:
        """Delete appointments in batches of 100; returns how many ids were sent.

        Idempotent: ids that are already gone are no error, so a batch may be sent again.
        """
        ids = list(ids)
        for start in range(0, len(ids), DELETE_BATCH):
            batch = ids[start : start + DELETE_BATCH]
            response = self._call(
                "appointments.delete",
                "POST",
                path("v1", "appointments", "delete", "bulk"),
                json={"ids": batch, "has_notify_customers": notify_customers},
                items=len(batch),
            )
            self._envelope(response, "appointments.delete")
        return len(ids)


def from_settings(settings, session: requests.Session | None = None, **http_options) -> Timify:
    """The configured company (app secret from the environment or a Secret block)."""
    own, secret, options = setup(settings, PROCESSOR, session=session, **http_options)
    return Timify.connect(own.base_url, own.app_id, secret, own.company_id, **options)


class TimifyEraser:
    """The TIMIFY customer (purpose ``booking``, external id: TIMIFY's customer id).

    The subject's appointments go first (their notes hold the concern of the consultation),
    then the customer; verified by reading customer and appointments back as absent. The
    appointments come as ``target.local``: (our booking ref, TIMIFY's id or None).
    """

    processor = PROCESSOR
    asynchronous = False

    def _customer(self, client: Timify, target: Target) -> dict | None:
        if target.external_id:
            return client.get_customer(target.external_id)
        return client.get_customer(str(target.subject_id), external=True)

    def erase(self, client: Timify, target: Target) -> str:
        ids = []
        for ref, appointment in target.local:
            if appointment is None:
                # Created before a crash lost its id: TIMIFY knows it by our booking id.
                found = client.get_appointment(ref, external=True)
                appointment = found["id"] if found else None
            if appointment is not None:
                ids.append(appointment)
        if ids:
            client.delete_appointments(ids)
        if target.external_id:
            client.delete_customer(target.external_id)
        else:
            client.delete_customer(str(target.subject_id), external=True)
        if not self.verify(client, target):
            raise NotVerified("customer or appointment still readable after the delete")
        return VERIFIED

    def verify(self, client: Timify, target: Target) -> bool:
        if self._customer(client, target) is not None:
            return False
        for ref, appointment in target.local:
            found = client.get_appointment(appointment) if appointment else client.get_appointment(ref, external=True)
            if found is not None:
                return False
        return True


ERASER = TimifyEraser()


class TimifyReader:
    """What TIMIFY holds (purpose ``booking``): the customer with its custom fields, and the
    subject's appointments (``target.local``: our booking ref, TIMIFY's id or None)."""

    processor = PROCESSOR

    def read(self, client: Timify, target: Target) -> dict[str, Any] | None:
        customer = ERASER._customer(client, target)
        appointments = []
        for ref, appointment in target.local:
            found = client.get_appointment(appointment) if appointment else client.get_appointment(ref, external=True)
            if found is not None:
                appointments.append(found)
        if customer is None and not appointments:
            return None
        return {"customer": customer, "appointments": appointments}


READER = TimifyReader()


# Rectification and restriction (Art. 16, 18, 19; connectors/amend.py) ---------------------
class TimifyAmender:
    """The TIMIFY customer (purpose ``booking``): its customfields are corrected with the
    ``PATCH /v1/customers/{id}`` the push uses, only the fields it holds (of insurance
    number and birth date it holds one). TIMIFY's API has no call that stops processing a
    customer without deleting it (none documented): a restriction goes there as a letter.
    """

    processor = PROCESSOR
    can_deactivate = False
    names: Mapping[str, str] = {
        name: name for name in ("email", "salutation", "first_name", "last_name", "phone", "birth_date")
    }

    def _customer(self, client: Timify, holder: Any) -> dict | None:
        if holder.external_id:
            return client.get_customer(holder.external_id)
        return client.get_customer(str(holder.subject_id), external=True)

    def read(self, client: Timify, holder: Any) -> dict[str, str] | None:
        customer = self._customer(client, holder)
        if customer is None:
            return None
        by_id = {field_id: name for name, field_id in client.field_ids().items()}
        held: dict[str, str] = {}
        for item in customer.get("customfields") or []:
            name = by_id.get(item.get("id"))
            if name is not None and name in self.names and item.get("value"):
                held[name] = str(item["value"])
        return held

    def update(self, client: Timify, holder: Any, changes: Mapping[str, str]) -> None:
        unknown = sorted(set(changes) - set(self.names))
        if unknown:  # refused before any call, like the allow-lists
            raise ValueError(f"field {unknown[0]} cannot be corrected at TIMIFY")
        customer = self._customer(client, holder)
        if customer is None:
            raise ValueError("the customer is not there to correct")
        client.upsert_customer(str(holder.subject_id), dict(changes), customer_id=str(customer["id"]))

    def deactivate(self, client: Timify, holder: Any) -> bool:
        raise NotImplementedError("TIMIFY has no call to restrict a customer")

    def reactivate(self, client: Timify, holder: Any) -> bool:
        raise NotImplementedError("TIMIFY has no call to restrict a customer")


AMENDER = TimifyAmender()
