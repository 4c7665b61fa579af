"""What the chaos and crash tests share about processes and processors.

- **Expected processor state, from the events alone.** ``Expected`` reads the website's
  event lines a test took in (plus what happened at the processors' side: unsubscribe
  clicks, erasures) and says what each processor must hold in the end: the receivers of each
  CleverReach group with their proof of consent, TIMIFY's customers and appointments with
  their fields, the issuer's cardholders and cards, Flexperto's customers. Nothing is read
  from our database, so a bug there cannot hide itself. ``compare`` lists every difference
  and ``duplicates`` every external id a processor created more than once.
- **A flow in an OS process of its own** (``start_flow``), killed with SIGKILL once the
  sandbox has answered K calls (``kill_after_calls``): ``psync run NAME -p key=value``
  with this test's environment and the session's Prefect API.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers

from core.settings import get_settings
from flows.intake import intake_lines
from models import identity
from models.db import transaction
from models.types import utcnow
from psync.sandbox_env import SERVICE_POINTS, TIMIFY_BRANCH_SERVICE_ID, TIMIFY_VIDEO_SERVICE_ID
from sandbox.timify_state import CUSTOMER_FIELDS

from support import TEST_KEY, sandbox_state

BERLIN = ZoneInfo("Europe/Berlin")
GROUPS = {"newsletter": "1001", "service_offers": "1002"}
PROCESSORS = ("cleverreach", "timify", "flexperto", "isic", "nect")

# TIMIFY's customer field ids, by what seed 001 sends (the sandbox's own definitions).
_FIELD_ID = {f["translationKey"] or f["label"]: f["id"] for f in CUSTOMER_FIELDS}
TIMIFY_FIELDS = {
    "email": _FIELD_ID["customerFields.basic.email"],
    "first_name": _FIELD_ID["customerFields.basic.firstName"],
    "last_name": _FIELD_ID["customerFields.basic.lastName"],
    "phone": _FIELD_ID["customerFields.basic.mobilePhone"],
    "birth_date": _FIELD_ID["customerFields.basic.birthday"],
    "salutation": _FIELD_ID["customerFields.basic.salutation"],
    "insurance_number": _FIELD_ID["Krankenversichertennummer"],
}


# expected state --------------------------------------------------------------------------
def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _e164(phone: str) -> str:
    return phonenumbers.format_number(phonenumbers.parse(phone, "DE"), phonenumbers.PhoneNumberFormat.E164)


def _utc_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Expected:
    """What the processors must hold after the events in `lines` (JSON strings or dicts).

    `photos` maps an order id to the photo's bytes (the issuer keeps their sha256);
    `unsubscribed` are addresses that clicked "abmelden" at CleverReach (withdrawn on every
    list, since the click deactivates them in every group); `erased` are addresses whose
    erasure completed. ``pushed_before_changes`` says that every booking request reached
    TIMIFY before any reschedule or cancellation was taken in (the customer of a cancelled
    booking then stays at TIMIFY; only the appointment goes).
    """

    def __init__(
        self,
        lines: Iterable[str | dict],
        photos: Mapping[str, bytes] | None = None,
        unsubscribed: Iterable[str] = (),
        erased: Iterable[str] = (),
    ):
        self.events = [json.loads(line) if isinstance(line, str) else line for line in lines]
        self.photos = dict(photos or {})
        self.unsubscribed = {e.lower() for e in unsubscribed}
        self.erased = {e.lower() for e in erased}

    # CleverReach ------------------------------------------------------------------------
    def receivers(self) -> dict[str, dict[str, dict]]:
        """Group id -> e-mail -> the receiver's fields, for every consent that stands."""
        consents: dict[tuple[str, str], dict] = {}
        person: dict[str, dict] = {}  # one subject per address: the latest sign-up names them
        for e in self.events:
            if not e["type"].startswith("consent."):
                continue
            key = (e["list"], e["email"].lower())
            if e["type"] == "consent.signup":
                consents[key] = {"signup": e, "confirm": None, "withdrawn": False}
                person[e["email"].lower()] = e
            elif e["type"] == "consent.confirm":
                consents[key]["confirm"] = e
            else:
                consents[key]["withdrawn"] = True
        groups: dict[str, dict[str, dict]] = {group: {} for group in GROUPS.values()}
        for (list_name, email), c in consents.items():
            signup, confirm = c["signup"], c["confirm"]
            if confirm is None or c["withdrawn"] or email in self.unsubscribed | self.erased:
                continue
            attributes = {
                "signup_ip": signup["ip"],
                "confirm_ip": confirm["ip"],
                "policy_version": signup["policy_version"],
            }
            if list_name == "service_offers":
                attributes["insurance_number"] = signup["insurance_number"].replace(" ", "").upper()
            groups[GROUPS[list_name]][email] = {
                "source": signup["source"],
                "registered": int(_time(signup["at"]).timestamp()),
                "activated": int(_time(confirm["at"]).timestamp()),
                "deactivated": 0,
                "active": True,
                "global_attributes": {
                    "salutation": person[email].get("salutation") or "",
                    "firstname": person[email]["first_name"],
                    "lastname": person[email]["last_name"],
                },
                "attributes": attributes,
            }
        return groups

    # TIMIFY and Flexperto ---------------------------------------------------------------
    def _bookings(self) -> dict[str, dict]:
        """Booking id -> the request with every later change applied, plus "cancelled"."""
        bookings: dict[str, dict] = {}
        for e in self.events:
            if e["type"] == "booking.request":
                bookings[e["booking_id"]] = {**e, "cancelled": False}
            elif e["type"] == "booking.reschedule":
                booking = bookings[e["booking_id"]]
                booking["start"] = e["start"]
                for key in ("duration_minutes", "service_point"):
                    if e.get(key) is not None:
                        booking[key] = e[key]
            elif e["type"] == "booking.cancel":
                bookings[e["booking_id"]]["cancelled"] = True
        return {ref: b for ref, b in bookings.items() if b["email"].lower() not in self.erased}

    def appointments(self) -> dict[str, dict]:
        """Booking id -> the appointment TIMIFY holds (its customer named by e-mail)."""
        return {
            ref: {
                "serviceId": TIMIFY_VIDEO_SERVICE_ID if b["channel"] == "video" else TIMIFY_BRANCH_SERVICE_ID,
                "resources": [] if b["channel"] == "video" else [SERVICE_POINTS[b["service_point"]]],
                "startDate": _utc_z(_time(b["start"])),
                "duration": b["duration_minutes"],
                "notes": b.get("concern") or "",
                "customer": b["email"].lower(),
            }
            for ref, b in self._bookings().items()
            if not b["cancelled"]
        }

    def customers(self, pushed_before_changes: bool = True) -> dict[str, dict]:
        """E-mail -> TIMIFY customer fields {field id: value}: every customer of a booking
        that reached TIMIFY (all of them, when pushed before their changes; else the ones
        not cancelled), with only what was given."""
        found: dict[str, dict] = {}
        for b in self._bookings().values():
            if b["cancelled"] and not pushed_before_changes:
                continue
            given = {
                "salutation": b["salutation"],
                "first_name": b["first_name"],
                "last_name": b["last_name"],
                "phone": _e164(b["phone"]),
                "email": b["email"].lower(),
                "insurance_number": b.get("insurance_number"),
                "birth_date": b.get("birth_date"),
            }
            found[b["email"].lower()] = {TIMIFY_FIELDS[k]: v for k, v in given.items() if v is not None}
        return found

    def flexperto_customers(self) -> dict[str, dict]:
        """Booking id -> Flexperto's customer (contact data only): video bookings not cancelled."""
        return {
            ref: {"email": b["email"].lower(), "phone": _e164(b["phone"])}
            for ref, b in self._bookings().items()
            if b["channel"] == "video" and not b["cancelled"]
        }

    def booking_refs(self, channel: str | None = None) -> set[str]:
        """Every booking id requested (erased people included), optionally of one channel."""
        return {
            e["booking_id"] for e in self.events if e["type"] == "booking.request" and channel in (None, e["channel"])
        }

    # the card issuer --------------------------------------------------------------------
    def _orders(self) -> dict[str, dict]:
        orders: dict[str, dict] = {}
        for e in self.events:
            if e["type"] == "isic.order":
                orders[e["order_id"]] = {**e, "cancelled": False}
            elif e["type"] == "isic.cancel":
                orders[e["order_id"]]["cancelled"] = True
        return orders

    def cardholders(self) -> dict[str, dict]:
        """Order id -> the cardholder the issuer holds: orders kept, of people not erased."""
        return {
            ref: {
                "firstName": o["first_name"],
                "lastName": o["last_name"],
                "dateOfBirth": o["birth_date"],
                "email": o["email"].lower(),
                "institutionName": o["institution"],
                "studentStatus": o.get("student_status", "student"),
                "photo": hashlib.sha256(self.photos[ref]).hexdigest(),
            }
            for ref, o in self._orders().items()
            if not o["cancelled"] and o["email"].lower() not in self.erased
        }

    def cards(self, status: str) -> dict[str, list[dict]]:
        """Order id -> its cards: one with the photo, in `status`, per cardholder kept."""
        return {ref: [{"status": status, "hasPhoto": True}] for ref in self.cardholders()}


def pseudonym(key: bytes, email: str) -> str:
    """Our pseudonym of an address (the only thing Nect ever gets)."""
    return identity.pseudonym(key, "email", email.lower())


def take_in(lines: list[str], base_dir: Path | None = None) -> None:
    """Intake `lines` with the test's key and settings; every one must be accepted
    ("unchanged" is fine: a reschedule to the slot the booking already has)."""
    with transaction() as session:
        results = intake_lines(
            session,
            TEST_KEY.encode(),
            lines,
            now=utcnow(),
            service_points=SERVICE_POINTS,
            base_dir=base_dir,
            document_key=get_settings().document_key_bytes(),
        )
    refused = [(r.line, r.reason) for r in results if r.outcome == "rejected"]
    assert not refused, refused


# what the sandbox holds -----------------------------------------------------------------


def actual_receivers(state: dict) -> dict[str, dict[str, dict]]:
    fields = ("source", "registered", "activated", "deactivated", "active", "global_attributes", "attributes")
    groups = state["cleverreach"]["groups"]
    return {
        group: {email: {k: r[k] for k in fields} for email, r in groups[group]["receivers"].items()}
        for group in GROUPS.values()
    }


def actual_timify(state: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """(appointments by external id, customers by e-mail) as TIMIFY holds them."""
    customers = state["timify"]["customers"]
    email_field = TIMIFY_FIELDS["email"]
    by_email: dict[str, dict] = {}
    email_of: dict[str, str] = {}
    for cid, c in customers.items():
        values = {f["id"]: f["value"] for f in c["customfields"]}
        email = values.get(email_field, f"<no e-mail: {cid}>")
        # Two customers with one address would be one person twice: keep both visible.
        by_email[email if email not in by_email else f"{email} (again: {cid})"] = values
        email_of[cid] = email
    appointments = {}
    for a in state["timify"]["appointments"].values():
        linked = [email_of.get(c["id"], f"<gone: {c['id']}>") for c in a["customers"]]
        appointments[a["externalId"]] = {
            "serviceId": a["serviceId"],
            "resources": [r["id"] for r in a["resources"]],
            "startDate": a["startDate"],
            "duration": a["duration"],
            "notes": a["notes"],
            "customer": linked[0] if len(linked) == 1 else linked,
        }
    return appointments, by_email


def actual_flexperto(state: dict) -> dict[str, dict]:
    customers = state["flexperto"]["customers"].values()
    return {c["external_id"]: {"email": c["email"], "phone": c["phone"]} for c in customers}


def actual_archives(state: dict) -> dict[str, list[str]]:
    """Flexperto's chat and recording archives by their customer's external id (an archive
    whose customer is gone is listed under "<gone: id>": archives outlive customers there)."""
    external = {cid: c["external_id"] for cid, c in state["flexperto"]["customers"].items()}
    archives: dict[str, list[str]] = defaultdict(list)
    for a in state["flexperto"]["archives"].values():
        archives[external.get(a["customer_id"], f"<gone: {a['customer_id']}>")].append(a["kind"])
    return {owner: sorted(kinds) for owner, kinds in archives.items()}


def actual_cardholders(state: dict) -> dict[str, dict]:
    keys = ("firstName", "lastName", "dateOfBirth", "email", "institutionName", "studentStatus")
    return {
        cid: {**{k: r[k] for k in keys}, "photo": (r["photo"] or {}).get("sha256")}
        for cid, r in state["isic"]["cardholders"].items()
    }


def actual_cards(state: dict) -> dict[str, list[dict]]:
    cards: dict[str, list[dict]] = defaultdict(list)
    for card in state["isic"]["cards"].values():
        cards[card["cardholderId"]].append({"status": card["status"], "hasPhoto": card["hasPhoto"]})
    return dict(cards)


# comparing ------------------------------------------------------------------------------
def compare(what: str, expected: Mapping, actual: Mapping, optional: Iterable = ()) -> list[str]:
    """Every key missing, unexpected or different, one line each (empty: equal).

    Keys in `optional` may be missing; where present they must hold the expected value.
    """
    lines = [f"{what}: missing {k}" for k in sorted(set(expected) - set(actual) - set(optional))]
    lines += [f"{what}: unexpected {k}" for k in sorted(set(actual) - set(expected))]
    lines += [
        f"{what}: {k}: expected {expected[k]!r}, found {actual[k]!r}"
        for k in sorted(set(expected) & set(actual))
        if expected[k] != actual[k]
    ]
    return lines


def creates(state: dict) -> dict[str, dict[str, int]]:
    """Every processor's create counter: external id -> successful creates."""
    return {
        "timify customers": state["timify"]["creates"]["customers"],
        "timify appointments": state["timify"]["creates"]["appointments"],
        "flexperto customers": state["flexperto"]["creates"],
        "isic cardholders": state["isic"]["creates"]["cardholders"],
        "isic cards": state["isic"]["creates"]["cards"],
        "nect cases": state["nect"]["creates"],
    }


def duplicates(state: dict) -> list[str]:
    """External ids some processor created more than once."""
    return [
        f"{what}: {key} created {n} times"
        for what, counter in creates(state).items()
        for key, n in sorted(counter.items())
        if n > 1
    ]


def calls_answered(state: dict, processors: Iterable[str] = PROCESSORS) -> int:
    """Calls the processors' handlers took (faults answered by the middleware and refused
    tokens are not among them)."""
    return sum(sum(state[p]["calls"].values()) for p in processors)


# a flow in its own process --------------------------------------------------------------
PSYNC = Path(sys.executable).with_name("psync")


def flow_environment() -> dict[str, str]:
    """This process's environment (the test's PSYNC_* settings) and the session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}


def start_flow(name: str, params: Mapping[str, object], folder: Path, label: str) -> subprocess.Popen:
    """``psync run NAME -p key=value ...`` in a new process; output to files in `folder`."""
    args = [str(PSYNC), "run", name]
    for key, value in params.items():
        args += ["-p", f"{key}={json.dumps(value)}"]
    # Files, not pipes: a full pipe would block a process nobody reads from.
    with (folder / f"{label}.out").open("w") as out, (folder / f"{label}.err").open("w") as err:
        return subprocess.Popen(args, env=flow_environment(), cwd=folder, stdout=out, stderr=err)


def output(folder: Path, label: str) -> str:
    """The tail of what the process wrote to stderr, for an assertion message."""
    return (folder / f"{label}.err").read_text()[-3000:]


def kill_after_calls(
    process: subprocess.Popen, url: str, processors: Iterable[str], calls: int, deadline_s: float = 60
) -> tuple[bool, int]:
    """SIGKILL `process` as soon as the sandbox has answered `calls` more calls of
    `processors` than when this was called.

    Returns (killed, calls it answered by then). Polls the sandbox and the process: slowly
    while the process starts up (each poll renders the whole state), every 5 ms once its
    calls come in. At the deadline the process is killed and AssertionError raised.
    """
    processors = tuple(processors)
    deadline = time.monotonic() + deadline_s
    before = calls_answered(sandbox_state(url), processors)
    while True:
        answered = calls_answered(sandbox_state(url), processors) - before
        if answered >= calls:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return process.returncode == -signal.SIGKILL, answered
        if process.poll() is not None:
            return False, answered
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"no {calls} calls within {deadline_s} s (saw {answered})")
        time.sleep(0.005 if answered else 0.05)
