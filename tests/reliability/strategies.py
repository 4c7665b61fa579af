"""Hypothesis strategies for hostile intake lines: every event type, from a valid event.

A ``Kind`` is one intake event type: a builder of a valid event (the builders of
``tests/models/test_*intake.py`` where they exist), the clock it is valid against, the
fields whose absence makes it invalid, and its free-text fields (where almost any printable
string is legal). ``mutations(kind)`` draws a ``Mutation``: a field dropped, set to a hostile
value, or an unknown field added; ``catalogue(kind)`` lists fixed ones, every family on every
field. ``certain`` says whether the result is invalid whatever was drawn; otherwise the test
accepts "rejected" or "stored verbatim".

Every hostile string carries ``MARKER``, so a test can tell whether a reason repeats it.
"""

from __future__ import annotations

import importlib.util
import json
import string
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

from hypothesis import strategies as st
from pydantic import BaseModel

from core.clock import berlin_today
from intake.booking import BookingCancel, BookingRequest, BookingReschedule
from intake.consent import ConsentConfirm, ConsentSignup, ConsentWithdraw
from intake.erasure import ErasureRequestEvent
from intake.ident import IdentCase
from intake.isic import IsicCancel, IsicOrderEvent
from intake.rights import RightsRequestEvent
from models.identity import insurance_number_valid

MARKER = "qxzmarker"  # lower-case letters no reason ever contains
DROP = object()  # the Mutation value that removes the field


def _intake_tests(name: str) -> ModuleType:
    """A module of tests/models, the one pytest runs (same sys.modules name, importlib mode)."""
    module_name = f"tests.models.{name}"
    if module_name not in sys.modules:
        path = Path(__file__).parents[1] / "models" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


consent = _intake_tests("test_intake")
booking = _intake_tests("test_booking_intake")
isic = _intake_tests("test_isic_intake")
erasure = _intake_tests("test_erasure_intake")

# Who the world of a test knows (see test_hostile_input.World).
PENDING_EMAIL = "pending.person@example.de"
BOOKING_ID = "B-1"
ORDER_ID = "O-1"
ERASURE_POOL = 400  # subjects an erasure request may name: each stored one opens a new request


def erasure_email(n: int) -> str:
    return f"erase{n % ERASURE_POOL}@example.de"


@dataclass(frozen=True)
class Kind:
    type: str
    model: type[BaseModel]
    now: datetime
    build: Callable[[int], dict]  # a valid event; n makes its identifiers fresh
    required: tuple[str, ...]  # without any of these the event is invalid
    free_text: frozenset[str] = frozenset()  # fields where any printable text is legal

    @property
    def multiline(self) -> frozenset[str]:
        return self.model.multiline  # type: ignore[attr-defined]  # the models that have one define it

    def known_keys(self) -> set[str]:
        keys = set(self.model.model_fields)
        keys |= {f.alias for f in self.model.model_fields.values() if f.alias}
        return keys


def _isic_cancel(n: int) -> dict:
    return {"type": "isic.cancel", "order_id": ORDER_ID, "at": isic.NOW.isoformat()}


KINDS = {
    k.type: k
    for k in (
        Kind(
            "consent.signup",
            ConsentSignup,
            consent.NOW,
            lambda n: consent.signup(email=f"signup{n}@example.de"),
            ("type", "list", "email", "first_name", "last_name", "ip", "at", "source", "policy_version"),
            frozenset({"salutation", "first_name", "last_name", "source", "policy_version"}),
        ),
        Kind(
            "consent.confirm",
            ConsentConfirm,
            consent.NOW,
            lambda n: consent.confirm(email=PENDING_EMAIL),
            ("type", "list", "email", "ip", "at"),
        ),
        Kind(
            "consent.withdraw",
            ConsentWithdraw,
            consent.NOW,
            lambda n: consent.withdraw(email=PENDING_EMAIL),
            ("type", "list", "email", "channel", "at"),
        ),
        # A branch booking identified by insurance number only: both are needed then.
        Kind(
            "booking.request",
            BookingRequest,
            booking.NOW,
            lambda n: booking.request(f"H-{n}"),
            (
                "type",
                "booking_id",
                "channel",
                "service_point",
                "start",
                "duration_minutes",
                "salutation",
                "first_name",
                "last_name",
                "phone",
                "email",
                "insurance_number",
                "at",
            ),
            frozenset({"first_name", "last_name", "concern"}),
        ),
        Kind(
            "booking.reschedule",
            BookingReschedule,
            booking.NOW,
            lambda n: booking.reschedule(BOOKING_ID),
            ("type", "booking_id", "start", "at"),
        ),
        Kind(
            "booking.cancel",
            BookingCancel,
            booking.NOW,
            lambda n: booking.cancel(BOOKING_ID),
            ("type", "booking_id", "at"),
        ),
        Kind(
            "isic.order",
            IsicOrderEvent,
            isic.NOW,
            lambda n: isic.order(f"H-{n}"),
            (
                "type",
                "order_id",
                "first_name",
                "last_name",
                "birth_date",
                "email",
                "postal_code",
                "iban",
                "institution",
                "documents",
                "at",
            ),
            frozenset({"first_name", "last_name", "institution", "phone_password"}),
        ),
        Kind("isic.cancel", IsicCancel, isic.NOW, _isic_cancel, ("type", "order_id", "at")),
        # Identified by e-mail only, so the e-mail is needed.
        Kind(
            "erasure.request",
            ErasureRequestEvent,
            erasure.NOW,
            lambda n: erasure.erase(email=erasure_email(n)),
            ("type", "at", "email"),
            frozenset({"reference"}),
        ),
        # A rights request names the same pool of subjects; a second one for a subject joins.
        Kind(
            "rights.request",
            RightsRequestEvent,
            erasure.NOW,
            lambda n: {
                "type": "rights.request",
                "right": "access",
                "email": erasure_email(n),
                "channel": "portal",
                "at": erasure.NOW.isoformat(),
            },
            ("type", "right", "at", "email"),
            frozenset({"reference"}),
        ),
        Kind(
            "ident.case",
            IdentCase,
            erasure.NOW,
            lambda n: {
                "type": "ident.case",
                "email": f"ident{n}@example.de",
                "case_id": str(uuid.UUID(int=n)),
                "at": erasure.NOW.isoformat(),
            },
            ("type", "email", "case_id", "at"),
        ),
    )
}


@dataclass(frozen=True)
class Mutation:
    family: str
    field: str
    value: object  # DROP, or the JSON value to set
    certain: bool = True  # invalid whatever was drawn
    secrets: tuple[str, ...] = ()  # what a reason must not repeat (besides MARKER)

    def apply(self, event: dict) -> dict:
        event = dict(event)
        if self.value is DROP:
            event.pop(self.field, None)
        else:
            event[self.field] = self.value
        return event

    def __repr__(self) -> str:  # a 1 MB value would drown the report
        shown = "DROP" if self.value is DROP else repr(self.value)
        if len(shown) > 200:
            shown = f"{shown[:120]}…<{len(shown)} chars>"
        return f"Mutation({self.family!r}, {self.field!r}, {shown}, certain={self.certain})"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints dataclasses field by field
        printer.text(repr(self))


# --- hostile values -------------------------------------------------------------------------

filler = st.text(alphabet=string.ascii_letters + "äöüß-", min_size=0, max_size=6)
marked = filler.map(lambda s: f"{MARKER}{s}")
# A key that is not shaped like a field name: a reason may name a field-name-shaped unknown
# key ("birthday"), never another (intake.describe).
marked_key = filler.map(lambda s: f"{MARKER} {s}")

CONTROL = (
    "\x00",
    "\x01",
    "\x07",
    "\x08",
    "\x0b",
    "\x0c",
    "\x1b",
    "\x7f",
    "\x85",
    "\x9b",
    "\u2028",
    "\u2029",  # line and paragraph separators
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",  # bidi embeddings and overrides
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",  # bidi isolates
    "\t",
    "\n",
    "\r",
    "\r\n",
)
LINE_BREAKS = {"\t", "\n", "\r", "\r\n"}  # allowed in multi-line free text (concern)
HEADER_INJECTION = (
    f"\r\nSet-Cookie: {MARKER}=1",
    f"\r\nBcc: {MARKER}@example.de",
    f"\nX-Injected: {MARKER}",
    f"\r\n\r\n<html>{MARKER}</html>",
)
# Printable, so legal in free text (a strange name is a name); invalid anywhere else.
INJECTION = (
    f"'; DROP TABLE data_subject; -- {MARKER}",
    f"' OR '1'='1' -- {MARKER}",
    f"{MARKER}'); DELETE FROM consent;--",
    f"1; UPDATE audit_entry SET detail='{MARKER}'",
    f'{MARKER}" OR ""="',
    f"' UNION SELECT email FROM data_subject -- {MARKER}",
    f"{MARKER}\\'; DROP TABLE booking; --",
    f"Robert'); DROP TABLE isic_order;-- {MARKER}",
    f"{MARKER}%0d%0aSet-Cookie:a=1",
    f"<script>{MARKER}</script>",
    f"${{jndi:ldap://{MARKER}/a}}",
    f"=cmd|' /C calc'!{MARKER}",
    f"{MARKER}{{{{7*7}}}}",
)


@st.composite
def oversized(draw) -> str:
    size = draw(st.integers(10_000, 1_000_000))
    unit = draw(marked) + draw(st.sampled_from(["", " ", "é", "0", "'"]))
    return (unit * (size // len(unit) + 1))[:size]


@st.composite
def with_control(draw, base: str, allowed_breaks: bool) -> str:
    choices = [c for c in CONTROL if not (allowed_breaks and c in LINE_BREAKS)]
    char = draw(st.sampled_from(choices))
    text = f"{base}{MARKER}"
    at = draw(st.integers(1, len(text) - 1))  # inside: leading and trailing whitespace is trimmed
    return text[:at] + char + text[at:]


def invalid_emails(m: str) -> list[str]:
    """Addresses no e-mail validator accepts, each around `m` (a marked string)."""
    return [
        m,
        f"{m}@",
        f"@{m}.de",
        f"{m}@@example.de",
        f"{m}@example",
        f"{m} x@example.de",
        f"{m}@exa mple.de",
        f"{m}..x@example.de",
        f".{m}@example.de",
        f"{m}.@example.de",
        f"{m}@example..de",
        f"{m}@-example.de",
        f'"{m}"x@example.de',
        f"{m}@[300.1.1.1]",
        f"{m}@{'a' * 64}.de",
        f"{m}@example.de;DROP TABLE x",
        f"<{m}>@example.de",
        f"{m}@example.de,{m}@example.org",
        f"{m}@example.de>",
        f"{m}(comment)@example.de",
        f"{m}@ex_ample.de",
    ]


INVALID_PHONES = (
    "12345",
    "0",
    "+49",
    "+49 30",
    "+999 1234567",
    "00",
    "+",
    "--",
    "()",
    "0800",
    "+49 30 12345678901234567",
    "+4930" + "1" * 35,
    "1" * 41,
    MARKER,
    f"+49 {MARKER}",
)


def invalid_insurance_numbers(letter: str, body: str, step: int) -> list[str]:
    """Health-insurance numbers that fail the format or check digit; `body` is 8 digits."""
    right = next(d for d in string.digits if insurance_number_valid(f"{letter}{body}{d}"))
    wrong = str((int(right) + step) % 10)  # step 1..9
    return [
        f"{letter}{body}{wrong}",  # a wrong check digit
        f"{body}{right}0",  # no letter
        f"{letter}{body}",  # too short
        f"{letter}{body}{right}1",  # too long
        f"{body[:3]}{letter}{body[3:]}{right}",  # the letter in the wrong place
        f"Ä{body}{right}",  # not A-Z
        f"{letter}{body[:4]}٣{body[5:]}{right}",  # an Arabic-Indic digit
        f"{letter}{MARKER}",
    ]


def _iban_check(country: str, bban: str) -> str:
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(digits) % 97:02d}"


def invalid_ibans(bban: str, step: int) -> list[str]:
    """German IBANs that fail the check digits or the length; `bban` is 18 digits."""
    right = _iban_check("DE", bban)
    wrong = f"{(int(right) - 2 + step) % 97 + 2:02d}"  # step 1..96: any other of 02..98
    changed = bban[:5] + str((int(bban[5]) + step % 9 + 1) % 10) + bban[6:]
    return [
        f"DE{wrong}{bban}",  # wrong check digits
        f"DE{right}{changed}",  # one digit of the account changed
        f"DE{right}{bban[:-1]}",  # one digit short
        f"DE{right}{bban}0",  # one digit long
        f"XX{right}{bban}",  # no such country
        f"DE{right} {bban[:4]} {MARKER}",
        MARKER,
    ]


def bad_datetimes(now: datetime, field: str) -> list:
    """Values certainly invalid for the date-time `field` of an event valid at `now`."""
    values: list = [
        "2026-03-20T08:55:00",
        "2026-03-20",
        "2026-03-20T08:55:00+25:00",
        "2026-03-20T08:55:00+99:99",
        "2026-02-30T10:00:00+01:00",
        "2026-13-01T10:00:00+01:00",
        "2026-03-20T25:00:00+01:00",
        "2026-03-20T10:60:00+01:00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:55:00-05:00",
        "1970-01-01T00:00:00Z",
        "1999-12-31T23:55:00+00:00",
        "2101-01-01T00:00:00+00:00",
        "yesterday",
        "",
        "2026-03-20T08:55:00+01:00[Europe/Berlin]",
        "20.03.2026 08:55",
        f"2026-03-20T08:55:00+01:00 {MARKER}",
        0,
        1,
        -1,
        1774000000,
        1774000000.5,
        1e300,
    ]
    if field == "at":
        values.append((now + timedelta(days=1)).isoformat())  # the website's clock is off
    if field == "start":
        values += [now.isoformat(), (now - timedelta(days=1)).isoformat(), "2026-12-03T10:03:00+01:00"]
    return values


def bad_birth_dates(now: datetime) -> list:
    # Birth dates are checked against the day it is in Berlin: after 22:00/23:00 UTC that is
    # the next day, and the UTC day is then a plausible birth date (yesterday).
    today = berlin_today(now)
    return [
        "1990-02-30",
        "1990-13-01",
        "0001-01-01",
        "9999-12-31",
        "17.05.1980",
        "",
        "1990-1-1",
        "1990-01-01T10:00:00+01:00",
        today.isoformat(),
        (today + timedelta(days=1)).isoformat(),
        today.replace(year=today.year - 131).isoformat(),
        0,
        631152000,
        MARKER,
    ]


invalid_email = marked.flatmap(lambda m: st.sampled_from(invalid_emails(m)))
invalid_phone = st.sampled_from(INVALID_PHONES) | marked
invalid_insurance_number = st.builds(
    invalid_insurance_numbers,
    st.sampled_from(string.ascii_uppercase),
    st.text(alphabet=string.digits, min_size=8, max_size=8),
    st.integers(1, 9),
).flatmap(st.sampled_from)
invalid_iban = st.builds(
    invalid_ibans, st.text(alphabet=string.digits, min_size=18, max_size=18), st.integers(1, 96)
).flatmap(st.sampled_from)


def formats(kind: Kind) -> dict[str, tuple[str, Callable[[], list], st.SearchStrategy]]:
    """Field -> (family, a fixed list of bad values, a strategy of bad values), for the
    fields of `kind` that have a format of their own."""
    sample = "A12345678", "370400440532013000"
    specs = {
        "email": ("invalid e-mail", lambda: invalid_emails(MARKER), invalid_email),
        "phone": ("invalid phone number", lambda: list(INVALID_PHONES), invalid_phone),
        "iban": ("invalid IBAN", lambda: invalid_ibans(sample[1], 7), invalid_iban),
        "insurance_number": (
            "invalid insurance number",
            lambda: invalid_insurance_numbers(sample[0][0], sample[0][1:], 3),
            invalid_insurance_number,
        ),
        "birth_date": ("bad date", lambda: bad_birth_dates(kind.now), st.sampled_from(bad_birth_dates(kind.now))),
        **{
            name: (
                "bad date",
                lambda name=name: bad_datetimes(kind.now, name),
                st.sampled_from(bad_datetimes(kind.now, name)),
            )
            for name in ("at", "start", "received_at")
        },
    }
    return {name: spec for name, spec in specs.items() if name in kind.known_keys()}


json_scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    marked,
)
json_values = st.recursive(
    st.one_of(st.none(), json_scalars),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(marked_key, inner, max_size=3),
    max_leaves=6,
)


def wrong_type(value: object, required: bool) -> st.SearchStrategy:
    """JSON values of another type than `value` (null only where null is not allowed).

    Not for a number field: a numeric string or a whole float ("30", 30.0), which pydantic
    reads as that number.
    """
    containers = st.lists(json_scalars, max_size=3) | st.dictionaries(marked_key, json_scalars, max_size=3)
    numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    options = [containers, st.booleans()]
    if isinstance(value, int):
        options += [marked, st.floats(0.1, 1000).filter(lambda f: not f.is_integer())]
    else:  # a string or an object
        options += [numbers] + ([marked] if isinstance(value, dict) else [])
    if required:
        options.append(st.none())
    return st.one_of(options)


TYPO_KEYS = ("birthday", "emial", "card_pin", "password", "iban", "concern", "list_id", "id", "ip_address")
HOSTILE_KEYS = (
    f"{MARKER}@example.de",
    f"x\r\nSet-Cookie: {MARKER}",
    f"{MARKER} Mustermann",
    f"{MARKER}\x00",
    f"'; DROP TABLE data_subject; -- {MARKER}",
    f"\u202e{MARKER}",
    f"{MARKER}.first_name",
)


def secrets_of(value: object) -> tuple[str, ...]:
    """The strings inside a JSON value."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, dict):
        return tuple(s for k, v in value.items() for s in (*secrets_of(k), *secrets_of(v)))
    if isinstance(value, list):
        return tuple(s for v in value for s in secrets_of(v))
    return ()


FAMILIES = (
    "missing field",
    "wrong JSON type",
    "oversized",
    "control character",
    "header injection",
    "injection",
    "unknown field",
    "field format",
)


def _text_fields(kind: Kind, base: dict) -> list[str]:
    """The text fields of the valid event, and free-text fields it leaves out."""
    return [n for n, v in base.items() if isinstance(v, str)] + sorted(kind.free_text - set(base))


def catalogue(kind: Kind) -> list[Mutation]:
    """Every family on every field with fixed values, each certainly invalid: the coverage
    a random sample may miss."""
    base, keys = kind.build(0), kind.known_keys()
    found = [Mutation("missing field", name, DROP) for name in kind.required]
    for name, value in base.items():
        wrong: list = [[], [MARKER], {f"{MARKER} x": 1}, True, False] + ([None] if name in kind.required else [])
        wrong += [MARKER, 30.5] if isinstance(value, int) else [12345, 1.5] + ([MARKER] * isinstance(value, dict))
        found += [Mutation("wrong JSON type", name, v, secrets=secrets_of(v)) for v in wrong]
    for name in _text_fields(kind, base):
        valid = base.get(name) or "Text"
        text = valid + MARKER
        found.append(Mutation("oversized", name, f"{MARKER} " * 2000))
        controls = [c for c in CONTROL if not (name in kind.multiline and c in LINE_BREAKS)]
        found += [Mutation("control character", name, text[:1] + c + text[1:]) for c in controls]
        if name not in kind.multiline:
            found += [Mutation("header injection", name, valid + h) for h in HEADER_INJECTION]
        if name not in kind.free_text:
            found += [Mutation("injection", name, v) for v in INJECTION]
    for key in TYPO_KEYS + HOSTILE_KEYS:
        if key not in keys:
            found.append(Mutation("unknown field", key, MARKER, secrets=(key,) * (key in HOSTILE_KEYS)))
    for name, (family, values, _) in formats(kind).items():
        found += [Mutation(family, name, v, secrets=secrets_of(v)) for v in values()]
    return found


def mutations(kind: Kind) -> st.SearchStrategy[Mutation]:
    """Every way this event type is made invalid (or, for free text, maybe still valid)."""
    base = kind.build(0)
    strings = _text_fields(kind, base)
    keys = kind.known_keys()
    bad = formats(kind)

    @st.composite
    def mutation(draw) -> Mutation:
        family = draw(st.sampled_from(FAMILIES))
        if family == "missing field":
            return Mutation(family, draw(st.sampled_from(kind.required)), DROP)
        if family == "wrong JSON type":
            name = draw(st.sampled_from(sorted(base)))
            value = draw(wrong_type(base[name], name in kind.required))
            return Mutation(family, name, value, secrets=secrets_of(value))
        if family == "unknown field":
            key = draw(st.sampled_from(TYPO_KEYS + HOSTILE_KEYS).filter(lambda k: k not in keys))
            value = draw(json_values)
            shown = (key,) if key in HOSTILE_KEYS else ()
            return Mutation(family, key, value, secrets=secrets_of(value) + shown)
        if family == "field format":
            name = draw(st.sampled_from(sorted(bad)))
            label, _, values = bad[name]
            value = draw(values)
            return Mutation(label, name, value, secrets=secrets_of(value))
        name = draw(st.sampled_from(strings))
        valid = base.get(name) or "Text"
        if family == "oversized":
            return Mutation(family, name, draw(oversized()))
        if family == "control character":
            return Mutation(family, name, draw(with_control(valid, name in kind.multiline)))
        if family == "header injection":  # line breaks are fine in multi-line text
            return Mutation(
                family, name, valid + draw(st.sampled_from(HEADER_INJECTION)), certain=name not in kind.multiline
            )
        assert family == "injection"  # SQL, markup, template: free text may hold it
        return Mutation(family, name, draw(st.sampled_from(INJECTION)), certain=name not in kind.free_text)

    return mutation()


def apply(kind: Kind, mutation: Mutation, n: int) -> dict:
    """The valid event number `n` of `kind`, mutated; a signup with an insurance number is
    put on the service-offers list, so the number itself is what is wrong."""
    event = mutation.apply(kind.build(n))
    if kind.type == "consent.signup" and mutation.field == "insurance_number":
        event["list"] = "service_offers"
    return event


def line(event: dict) -> str:
    return json.dumps(event, ensure_ascii=False)
