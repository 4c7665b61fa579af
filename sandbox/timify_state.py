"""In-memory TIMIFY company: customer fields, customers, appointments, tokens.

Pure data and rules, no HTTP: the router in :mod:`sandbox.timify` turns
requests into calls on :class:`TimifyState` and :class:`TimifyError` into
responses. The appointment object has the keys of the answer recorded from
TIMIFY's staging API (``timify-responses/appointment.json``).

Times: clients send ``startDate`` as ``"YYYY-MM-DD HH:mm"`` in the company's
local time (Europe/Berlin); every answer carries UTC with a ``Z``. A local
time that does not exist (the hour skipped when summer time starts) is
refused; an ambiguous one (the hour repeated in autumn) is read as the first
occurrence, summer time.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from starlette.responses import JSONResponse

from sandbox.common import TokenStore, bump, iso_z
from sandbox.errors import ApiError

COMPANY_ID = "5f0c1a2b3c4d5e6f7a8b9c0d"
COMPANY_NAME = "psync Sandbox GmbH"
COMPANY_TZ = ZoneInfo("Europe/Berlin")
ENTERPRISE_ID = "65aea871f011c03363aefdb3"
API_USER_ID = "65f95e4428d1042df8800001"
API_USER_NAME = "psync-sandbox"
LIMIT_DEFAULT = 50
LIMIT_MAX = 100
MAX_SPAN_DAYS = 365

_STATUS_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    429: "TooManyRequests",
}


def _field(
    fid: str,
    kind: str,
    key: str | None,
    order: int,
    mandatory: bool = False,
    label: str | None = None,
    options: list[dict] | None = None,
) -> dict:
    return {
        "id": fid,
        "type": kind,
        "isMandatoryOnline": mandatory,
        "isAfterAuth": True,
        "hasOverwrite": True,
        "translationKey": key,
        "label": label,
        "selectOptions": options,
        "orderIndex": order,
        "placeholder": None,
    }


# The first three are the recorded ones, verbatim; the rest extend the company
# with the fields seed 001 sends (ids chosen in the same id space).
CUSTOMER_FIELDS: tuple[dict, ...] = (
    _field("65c39ebd07a04b9210cccb96", "EMAIL", "customerFields.basic.email", 7, mandatory=True),
    _field("65c39ebd07a04b9210cccb98", "TEXT", "customerFields.basic.firstName", 5, mandatory=True),
    _field("65c39ebd07a04b9210cccb99", "TEXT", "customerFields.basic.lastName", 6, mandatory=True),
    _field("65c39ebd07a04b9210cccb9a", "PHONE", "customerFields.basic.mobilePhone", 8),
    _field("65c39ebd07a04b9210cccb9b", "DATE", "customerFields.basic.birthday", 9),
    _field(
        "65c39ebd07a04b9210cccb9c",
        "SELECT",
        "customerFields.basic.salutation",
        4,
        options=[{"value": "Frau"}, {"value": "Herr"}, {"value": "divers"}],
    ),
    _field("65c39ebd07a04b9210cccb9d", "TEXT", None, 10, label="Krankenversichertennummer"),
)
FIELD_TYPES = {f["id"]: f["type"] for f in CUSTOMER_FIELDS}

SERVICES: dict[str, dict] = {
    sid: {"id": sid, "name": name, "color": color}
    for sid, name, color in (
        ("65e6d029d9d6e5c324d2aa01", "Beratung in der Filiale", "#ebb65d"),
        ("65e6d029d9d6e5c324d2aa02", "Videoberatung", "#5d9beb"),
    )
}

_SERVICE_POINT_CATEGORY = {
    "id": "65e6da48abcab5a29f063c01",
    "externalId": "service-points",
    "internalId": "65e6da48abcab5a29f063c00",
    "orderIndex": 1,
    "name": "Filialen",
    "isDefault": False,
    "isDependency": False,
}
RESOURCES: dict[str, dict] = {
    rid: {"id": rid, "externalId": ext, "name": name, "email": "", "category": _SERVICE_POINT_CATEGORY}
    for rid, ext, name in (
        ("65e6d029d9d6e5c324d2bb01", "sp-hamburg", "Filiale Hamburg"),
        ("65e6d029d9d6e5c324d2bb02", "sp-berlin", "Filiale Berlin"),
        ("65e6d029d9d6e5c324d2bb03", "sp-muenchen", "Filiale München"),
    )
}

CUSTOMER_KEYS = frozenset({"externalId", "customfields"})
# Anything else in a body is refused, so a client sending data TIMIFY should
# not get (seed 001 minimises it) fails loudly instead of silently.
APPOINTMENT_KEYS = frozenset(
    {"externalId", "service_id", "resource_ids", "startDate", "duration", "customers", "notes", "has_notify_customers"}
)

_LOCAL_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class TimifyError(ApiError):
    """An error answered in TIMIFY's (assumed) shape ``{"status":0,"error":{code,message}}``.

    ``error_code`` is TIMIFY's string code (``DuplicateExternalId``, ...);
    by default it is derived from the HTTP status. Messages never carry
    personal data: they end up in client logs.
    """

    def __init__(self, status: int, message: str, error_code: str | None = None, headers=None) -> None:
        super().__init__(status, message, headers)
        self.error_code = error_code

    def response(self) -> JSONResponse:
        return timify_error_response(self.code, self.message, self.headers, self.error_code)


def timify_error_response(status: int, message: str, headers=None, error_code: str | None = None) -> JSONResponse:
    """Return a JSON response in TIMIFY's error shape."""
    code = error_code or _STATUS_CODES.get(status, "ServerError" if status >= 500 else "Error")
    body = {"status": 0, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def now() -> datetime:
    """Current UTC time to the second (module-level so tests can patch it)."""
    return datetime.now(UTC).replace(microsecond=0)


def parse_local_start(value: object) -> datetime:
    """Company-local ``YYYY-MM-DD HH:mm`` -> aware UTC datetime, or 400."""
    if not isinstance(value, str) or not _LOCAL_DATETIME.fullmatch(value):
        raise TimifyError(400, "startDate must be 'YYYY-MM-DD HH:mm'")
    try:
        naive = datetime.strptime(value, "%Y-%m-%d %H:%M")  # noqa: DTZ007 - TIMIFY sends Berlin wall time; zoned below
    except ValueError:
        raise TimifyError(400, "startDate is not a valid date") from None
    if naive.minute % 5:
        raise TimifyError(400, "startDate minutes must be divisible by 5")
    start = naive.replace(tzinfo=COMPANY_TZ).astimezone(UTC)
    # zoneinfo silently shifts a time inside the spring-forward gap; a round
    # trip that does not return the same wall time exposes it.
    if start.astimezone(COMPANY_TZ).replace(tzinfo=None) != naive:
        raise TimifyError(400, "startDate does not exist in company time (DST change)")
    return start


def parse_day(value: object, name: str) -> date:
    """A ``YYYY-MM-DD`` query value, or 400."""
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise TimifyError(400, f"{name} must be 'YYYY-MM-DD'")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise TimifyError(400, f"{name} is not a valid date") from None


def paginate(items: list, page: int, limit: int) -> dict:
    """The TIMIFY list envelope around one 1-based page of ``items``."""
    if page < 1 or limit < 1:
        raise TimifyError(400, "page and limit must be positive")
    limit = min(limit, LIMIT_MAX)
    total = len(items)
    start = (page - 1) * limit
    return {
        "data": items[start : start + limit],
        "total": total,
        "meta": {"page": page, "limit": limit, "totalItems": total, "totalPages": -(-total // limit)},
        "status": 1,
    }


def _clean_customfields(raw: object) -> list[tuple[str, str | None]]:
    """Validate ``[{"id","value"}]``; ``None`` means "remove this field"."""
    if not isinstance(raw, list):
        raise TimifyError(400, "customfields must be a list")
    seen: set[str] = set()
    clean: list[tuple[str, str | None]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise TimifyError(400, f"customfields[{index}] must be an object with an id")
        fid, value = item["id"], item.get("value")
        if fid not in FIELD_TYPES:
            raise TimifyError(400, f"customfields[{index}]: unknown field id {fid}")
        if fid in seen:
            raise TimifyError(400, f"customfields[{index}]: field id given twice")
        seen.add(fid)
        if value is None or value == "":
            clean.append((fid, None))
            continue
        if not isinstance(value, str):
            raise TimifyError(400, f"customfields[{index}]: value must be a string")
        _check_value(FIELD_TYPES[fid], value, index)
        clean.append((fid, value))
    return clean


def _check_value(kind: str, value: str, index: int) -> None:
    # Messages name the index and type only: the value is personal data.
    if kind == "EMAIL":
        local, at, domain = value.partition("@")
        if not (at and local and domain and "@" not in domain):
            raise TimifyError(400, f"customfields[{index}]: invalid email")
    elif kind == "DATE":
        try:
            parse_day(value, "date")
        except TimifyError:
            raise TimifyError(400, f"customfields[{index}]: date must be 'YYYY-MM-DD'") from None


def _merge_fields(current: list[dict], changes: list[tuple[str, str | None]]) -> list[dict]:
    values = {f["id"]: f["value"] for f in current}
    for fid, value in changes:
        if value is None:
            values.pop(fid, None)
        else:
            values[fid] = value
    return [{"id": fid, "value": value} for fid, value in values.items()]


def _external_id(body: dict) -> str:
    value = body.get("externalId") or ""
    if not isinstance(value, str):
        raise TimifyError(400, "externalId must be a string")
    return value


class TimifyState:
    """The whole imitated company. All mutations go through these methods."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty the company (fields, services and resources stay); revoke tokens."""
        self.customers: dict[str, dict] = {}
        self.appointments: dict[str, dict] = {}
        # The validated request behind each appointment, so a PATCH can be
        # checked as a whole (new values over old ones) before it applies.
        self._plans: dict[str, dict] = {}
        self._customer_ext: dict[str, str] = {}
        self._appointment_ext: dict[str, str] = {}
        self.creates: dict[str, dict[str, int]] = {"customers": {}, "appointments": {}}
        self.calls: dict[str, int] = {}
        self.tokens = TokenStore()  # access tokens
        self.refresh_tokens: set[str] = set()
        self._next_id = 1

    def _new_id(self) -> str:
        # ObjectId-like: creation second + counter, so ids sort by creation.
        oid = f"{int(time.time()):08x}{self._next_id:016x}"
        self._next_id += 1
        return oid

    # -- tokens -----------------------------------------------------------
    def issue_token(self, ttl_s: int, refresh_token: str | None = None) -> dict:
        """A new access token; a new refresh token unless one is being used."""
        access = self.tokens.issue(ttl_s)
        if refresh_token is None:
            refresh_token = secrets.token_hex(20)
            self.refresh_tokens.add(refresh_token)
        return {"accessToken": access, "expires": ttl_s, "refreshToken": refresh_token}

    def refresh(self, refresh_token: object, ttl_s: int) -> dict:
        """Exchange a refresh token (kept valid until reset) for an access token."""
        if not isinstance(refresh_token, str) or refresh_token not in self.refresh_tokens:
            raise TimifyError(401, "invalid refresh token")
        return self.issue_token(ttl_s, refresh_token)

    # -- customers --------------------------------------------------------
    def list_customers(self) -> list[dict]:
        """All customers in creation order."""
        return list(self.customers.values())

    def customer(self, key: str, external: bool) -> dict:
        """A customer by id, or by externalId when ``external``; else 404."""
        cid = self._customer_ext.get(key) if external else key
        found = self.customers.get(cid) if cid else None
        if found is None:
            raise TimifyError(404, "customer not found")
        return found

    def create_customer(self, body: object) -> dict:
        """Create a customer; 409 ``DuplicateExternalId`` if the externalId exists."""
        if not isinstance(body, dict):
            raise TimifyError(400, "expected an object")
        _reject_unknown(body, CUSTOMER_KEYS)
        ext = _external_id(body)
        fields = _merge_fields([], _clean_customfields(body.get("customfields", [])))
        if ext and ext in self._customer_ext:
            raise TimifyError(409, "a customer with this externalId exists", "DuplicateExternalId")
        stamp = iso_z(now())
        cid = self._new_id()
        customer = {"id": cid, "externalId": ext, "customfields": fields, "createdAt": stamp, "updatedAt": stamp}
        self.customers[cid] = customer
        if ext:
            self._customer_ext[ext] = cid
            bump(self.creates["customers"], ext)
        return customer

    def update_customer(self, key: str, external: bool, body: object) -> dict:
        """Merge customfields (null or "" removes a field); may change externalId."""
        customer = self.customer(key, external)
        if not isinstance(body, dict):
            raise TimifyError(400, "expected an object")
        _reject_unknown(body, CUSTOMER_KEYS)
        changes = _clean_customfields(body.get("customfields", []))
        ext = _external_id(body) if "externalId" in body else customer["externalId"]
        if ext != customer["externalId"]:
            if ext in self._customer_ext:
                raise TimifyError(409, "a customer with this externalId exists", "DuplicateExternalId")
            self._customer_ext.pop(customer["externalId"], None)
            if ext:
                self._customer_ext[ext] = customer["id"]
            customer["externalId"] = ext
        customer["customfields"] = _merge_fields(customer["customfields"], changes)
        customer["updatedAt"] = iso_z(now())
        return customer

    def delete_customer(self, key: str, external: bool) -> str:
        """Delete a customer; its appointments keep their booking reference."""
        customer = self.customer(key, external)
        del self.customers[customer["id"]]
        self._customer_ext.pop(customer["externalId"], None)
        return customer["id"]

    # -- appointments -----------------------------------------------------
    def appointment(self, key: str, external: bool) -> dict:
        """An appointment by id, or by externalId when ``external``; else 404."""
        aid = self._appointment_ext.get(key) if external else key
        found = self.appointments.get(aid) if aid else None
        if found is None:
            raise TimifyError(404, "appointment not found")
        return found

    def create_appointment(self, body: object) -> dict:
        """Book an appointment; 400 on any invalid input, 409 on a known externalId."""
        if not isinstance(body, dict):
            raise TimifyError(400, "expected an object")
        _reject_unknown(body, APPOINTMENT_KEYS)
        ext = _external_id(body)
        plan = self._plan(body)
        if ext and ext in self._appointment_ext:
            raise TimifyError(409, "an appointment with this externalId exists", "DuplicateExternalId")
        stamp = now()
        aid = self._new_id()
        appointment = _new_appointment(aid, ext, stamp)
        _apply_plan(appointment, plan, stamp)
        self.appointments[aid] = appointment
        self._plans[aid] = plan
        if ext:
            self._appointment_ext[ext] = aid
            bump(self.creates["appointments"], ext)
        return appointment

    def update_appointment(self, key: str, external: bool, body: object) -> dict:
        """Reschedule or change an appointment; validated as a whole before applying."""
        appointment = self.appointment(key, external)
        if not isinstance(body, dict):
            raise TimifyError(400, "expected an object")
        _reject_unknown(body, APPOINTMENT_KEYS)
        previous = self._plans[appointment["id"]]
        plan = self._plan({**previous, **body}, previous)
        ext = _external_id(body) if "externalId" in body else appointment["externalId"]
        if ext != appointment["externalId"]:
            if ext in self._appointment_ext:
                raise TimifyError(409, "an appointment with this externalId exists", "DuplicateExternalId")
            self._appointment_ext.pop(appointment["externalId"], None)
            if ext:
                self._appointment_ext[ext] = appointment["id"]
            appointment["externalId"] = ext
        _apply_plan(appointment, plan, now())
        self._plans[appointment["id"]] = plan
        return appointment

    def list_appointments(self, from_date: str | None, to_date: str | None, ids: str | None) -> list[dict]:
        """By ``ids`` (unknown ones skipped) or by a local-date span of at most 365 days."""
        if ids is not None:
            wanted = [i for i in ids.split(",") if i]
            return [self.appointments[i] for i in wanted if i in self.appointments]
        if from_date is None or to_date is None:
            raise TimifyError(400, "from_date and to_date are required unless ids are given")
        first, last = parse_day(from_date, "from_date"), parse_day(to_date, "to_date")
        if last < first:
            raise TimifyError(400, "to_date is before from_date")
        if (last - first).days > MAX_SPAN_DAYS:
            raise TimifyError(400, f"the date span must not exceed {MAX_SPAN_DAYS} days")
        found = [a for a in self.appointments.values() if first <= self._local_day(a["id"]) <= last]
        return sorted(found, key=lambda a: a["startDate"])

    def delete_appointments(self, body: object) -> list[str]:
        """Bulk delete; unknown ids are ignored; returns the ids deleted."""
        if not isinstance(body, dict):
            raise TimifyError(400, "expected an object")
        ids = body.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise TimifyError(400, "ids must be a list of strings")
        if not isinstance(body.get("has_notify_customers", False), bool):
            raise TimifyError(400, "has_notify_customers must be a boolean")
        deleted = []
        for aid in ids:
            appointment = self.appointments.pop(aid, None)
            if appointment is not None:
                del self._plans[aid]
                self._appointment_ext.pop(appointment["externalId"], None)
                deleted.append(aid)
        return deleted

    def _local_day(self, aid: str) -> date:
        return self._plans[aid]["start"].astimezone(COMPANY_TZ).date()

    def _plan(self, body: dict, previous: dict | None = None) -> dict:
        """Validate the bookable part of an appointment body into a plan.

        Customers already booked (``previous``) stay valid after their own
        deletion, so such an appointment can still be rescheduled.
        """
        service_id = body.get("service_id")
        if service_id not in SERVICES:
            raise TimifyError(400, "unknown service_id")
        # A video consultation is booked by service alone (TIMIFY assigns the adviser); a
        # branch consultation names its service point, a resource.
        resource_ids = body.get("resource_ids", [])
        if not isinstance(resource_ids, list) or not all(isinstance(r, str) for r in resource_ids):
            raise TimifyError(400, "resource_ids must be a list of ids")
        if any(r not in RESOURCES for r in resource_ids):
            raise TimifyError(400, "unknown resource id")
        start = parse_local_start(body.get("startDate"))
        duration = body.get("duration")
        if isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0 or duration % 5:
            raise TimifyError(400, "duration must be a positive multiple of 5 minutes")
        customers = body.get("customers", [])
        if not isinstance(customers, list) or not all(isinstance(c, str) for c in customers):
            raise TimifyError(400, "customers must be a list of customer ids")
        known = {ref["id"]: ref for ref in (previous or {}).get("customer_refs", [])}
        for c in customers:
            if c in self.customers:
                known[c] = {"id": c, "externalId": self.customers[c]["externalId"]}
        if any(c not in known for c in customers):
            raise TimifyError(400, "unknown customer id")
        notes = body.get("notes") or ""
        if not isinstance(notes, str):
            raise TimifyError(400, "notes must be a string")
        notify = body.get("has_notify_customers", False)
        if not isinstance(notify, bool):
            raise TimifyError(400, "has_notify_customers must be a boolean")
        return {
            "service_id": service_id,
            "resource_ids": list(dict.fromkeys(resource_ids)),
            "startDate": body["startDate"],
            "start": start,
            "duration": duration,
            "customers": list(customers),
            "customer_refs": [known[c] for c in customers],
            "notes": notes,
            "has_notify_customers": notify,
        }

    # -- control ----------------------------------------------------------
    def snapshot(self) -> dict:
        """State for ``GET /_sandbox/state``; shares live objects (no copies)."""
        return {
            "company_id": COMPANY_ID,
            "services": SERVICES,
            "resources": RESOURCES,
            "customers": self.customers,
            "appointments": self.appointments,
            "creates": self.creates,
            "calls": self.calls,
            "tokens": self.tokens.issued,
        }


def _reject_unknown(body: dict, allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise TimifyError(400, f"unknown keys: {', '.join(unknown)}")


def _new_appointment(aid: str, ext: str, stamp: datetime) -> dict:
    # Key order follows the recorded answer; values filled by _apply_plan.
    created = iso_z(stamp)
    return {
        "id": aid,
        "externalId": ext,
        "type": "booking",
        "title": "",
        "notes": "",
        "color": "",
        "price": 0,
        "date": "",
        "duration": 0,
        "durationBefore": 0,
        "durationAfter": 0,
        "durationsPattern": [],
        "startDate": "",
        "createdAt": created,
        "createdBy": API_USER_NAME,
        "createdByUserId": API_USER_ID,
        "createdByScope": "COMPANY",
        "updatedAt": created,
        "updatedBy": API_USER_NAME,
        "updatedByUserId": API_USER_ID,
        "updatedByScope": "COMPANY",
        "rescheduleUntil": "",
        "reschedulingSecret": str(uuid.uuid4()),
        "companyName": COMPANY_NAME,
        "timestamp": "",
        "isOnlineBooking": False,
        "isBookable": True,
        "isCourse": False,
        "isPaidOnlineWithStripe": False,
        "isPaidOnlineWithPaypal": False,
        "hasNotifyCustomers": False,
        "hasNotifyResources": False,
        "maxParticipants": 1,
        "participants": 0,
        "customers": [],
        "singleCustomers": [],
        "customfields": [],
        "resources": [],
        "serviceId": None,
        "service": None,
        "recurring": None,
        "chainId": None,
        "chainedEvents": [],
        "isLastInTheChain": None,
        "bookings": [],
        "tagIds": [],
        "tags": [],
        "combination": None,
        "reservedUntil": None,
        "metadata": {},
        "scheduledForDeletionAt": None,
        "enterpriseId": ENTERPRISE_ID,
    }


def _apply_plan(appointment: dict, plan: dict, stamp: datetime) -> None:
    start, duration = plan["start"], plan["duration"]
    begin, end = iso_z(start), iso_z(start + timedelta(minutes=duration))
    service = SERVICES[plan["service_id"]]
    appointment.update(
        title=service["name"],
        notes=plan["notes"],
        color=service["color"],
        date=start.strftime("%Y-%m-%dZ"),
        duration=duration,
        durationsPattern=[duration],
        startDate=begin,
        updatedAt=iso_z(stamp),
        rescheduleUntil=iso_z(start - timedelta(days=1)),
        timestamp=str(int(stamp.timestamp() * 1000)),
        hasNotifyCustomers=plan["has_notify_customers"],
        participants=len(plan["customers"]),
        customers=plan["customer_refs"],
        resources=[RESOURCES[r] for r in plan["resource_ids"]],
        serviceId=service["id"],
        service={"id": service["id"], "name": service["name"]},
    )
    appointment["bookings"] = [
        {
            "id": secrets.token_hex(16),
            "startDate": begin,
            "interval": {"begin": begin, "end": end},
            "batchNumber": 0,
            "isFirstBatch": True,
            "isLastBatch": True,
            "recurringDay": None,
            "duration": duration,
            "durationBefore": 0,
            "durationAfter": 0,
            "durationTotal": duration,
            "resourceId": (plan["resource_ids"] or [None])[0],
            "externalId": appointment["externalId"],
            "notes": plan["notes"],
            "customers": plan["customer_refs"],
        }
    ]
