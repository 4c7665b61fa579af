"""Field types and the base model every intake event shares, and what applying one gives."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, ClassVar, NamedTuple, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from models.audit import AuditEvent
from models.identity import normalise_email, normalise_insurance_number, normalise_phone

# Addresses checked in this validation context (one intake run): a sign-up and its
# confirmation name the same address, and checking one costs more than the rest of the line.
# Held only for the run, never beyond it (the context goes with it); bounded all the same.
EMAIL_CACHE = "emails"
# The domains checked in this run (``models.identity.KnownDomains``): most addresses are at
# a few domains, and the domain's check is most of an address's.
EMAIL_DOMAINS = "email_domains"
_EMAIL_CACHE_SIZE = 100_000


def _email(value: str, info: ValidationInfo) -> str:
    context = info.context or {}
    cache = context.get(EMAIL_CACHE)
    if cache is None:
        return normalise_email(value)
    found = cache.get(value)
    if found is None:
        domains = context.get(EMAIL_DOMAINS)
        # A ValueError is not kept: the line is rejected.
        found = domains.normalise(value) if domains is not None else normalise_email(value)
        if len(cache) >= _EMAIL_CACHE_SIZE:
            cache.clear()
        cache[value] = found
    return found


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]

# An IPv4 address as ``IPv4Address`` prints it: four decimal octets up to 255, no leading zero.
_IPV4 = re.compile(
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
)


def _ip(value: Any) -> str:
    # What ``IPv4Address | IPv6Address`` accepted, kept as its text: pydantic's union tried
    # both address types on every line (an IPv4 address through the IPv6 parser as well),
    # and printing the address again for storing cost as much. The common case (an IPv4
    # address written as it prints) is one regular expression; anything else goes through
    # ``ipaddress``, whose text is the canonical one (the line's dedupe key is unchanged).
    if isinstance(value, IPv4Address | IPv6Address):
        return str(value)
    if type(value) is str:
        if _IPV4.fullmatch(value):
            return value
        for kind in (IPv4Address, IPv6Address):
            try:
                return str(kind(value))
            except ValueError:
                continue
    raise PydanticCustomError("ip_address", "Input is not a valid IPv4 or IPv6 address")


# The text of an IP address (as ``str(ipaddress.ip_address(...))`` gives it); a str, not an
# address object. The schema says what it was: an IPv4 or an IPv6 address.
IpAddress = Annotated[str, PlainValidator(_ip, json_schema_input_type=IPv4Address | IPv6Address)]
InsuranceNumber = Annotated[str, Field(max_length=20), AfterValidator(normalise_insurance_number)]
Phone = Annotated[str, Field(max_length=40), AfterValidator(normalise_phone)]

# What a field name looks like: only such a name may be repeated in a reason (a key is input).
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# C0 and C1 controls (NUL, CR, LF, ESC, ...), line and paragraph separators, bidi embeddings,
# overrides and isolates: header and log injection, text that displays as something else, and
# NUL, which PostgreSQL cannot store. Multi-line free text may hold tabs and line breaks.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# No event is older or newer; far-off years also overflow on conversion to UTC or Berlin time.
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def _plausible_time(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"must lie between {EARLIEST.year} and {LATEST.year}")
    return value


# Every time field of an event is one of these (a validator on every field of every line,
# as it was, ran eight times a line to check the one or two that are times).
PlausibleTime = Annotated[AwareDatetime, AfterValidator(_plausible_time)]


@cache
def _keys(model: type[BaseModel]) -> dict[str, bool]:
    """Each key an event of `model` may have (name or alias): whether its field is a number."""
    keys = {}
    for name, info in model.model_fields.items():
        numeric = any(t in (int, float) for t in get_args(info.annotation) or (info.annotation,))
        keys[name] = numeric
        if info.alias:
            keys[info.alias] = numeric
    return keys


class EventBase(BaseModel):
    """Unknown fields are refused, so a typo or a field we must not hold never slips in.

    Every text field refuses control characters, and a JSON number is accepted only where the
    field is a number (pydantic would read 0 as the time 1970-01-01T00:00Z, or as an IP address).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True)

    # Free-text fields that may span lines (a textarea on the website).
    multiline: ClassVar[frozenset[str]] = frozenset()

    at: PlausibleTime = Field(description="when the website recorded it, ISO 8601 with offset")

    @model_validator(mode="before")
    @classmethod
    def _plain_json(cls, data: Any) -> Any:
        # A model validator, as pydantic allows no before-validator on the discriminator.
        if isinstance(data, dict):
            keys = _keys(cls)
            # One search over all texts (the stricter pattern, and a space between them, which
            # neither pattern matches) finds nothing on nearly every line; only when it does,
            # or a number stands where none may, is each field looked at below, in order.
            texts = []
            for key, value in data.items():
                if isinstance(value, str):
                    texts.append(value)
                elif isinstance(value, int | float) and not keys.get(key, True):  # an unknown key is refused anyway
                    break
            else:
                if not _CONTROL.search(" ".join(texts)):
                    return data
            for key, value in data.items():
                if key not in keys:
                    continue  # refused as an unknown field
                if isinstance(value, str):
                    control = _CONTROL_MULTILINE if key in cls.multiline else _CONTROL
                    if control.search(value):
                        raise ValueError(f"{key}: must not contain control characters or bidi overrides")
                elif isinstance(value, int | float) and not keys[key]:
                    raise ValueError(f"{key}: must not be a number or boolean")
        return data


def context_now(info) -> datetime | None:
    """The intake's clock, passed as validation context (None when validating without one)."""
    return (info.context or {}).get("now")


# Validation context key: skip the checks against the intake's clock and the disk (a start
# ahead, a plausible age, the documents there). What is left gives the line's model, and so
# its dedupe key, as it was when the line was stored (``intake.lines.Refused``).
LENIENT = "lenient"


def lenient(info) -> bool:
    """Whether this validation skips the checks against the clock and the disk."""
    return bool((info.context or {}).get(LENIENT))


class Applied(NamedTuple):
    """What a store made of one line: its outcome (``stored``, ``unchanged``, ``duplicate``,
    ``pending``),
    the audit event to write, if any, and for ``unchanged`` why (never personal data); a
    ``stored`` line may say what it did not do (a reschedule of a cancelled booking)."""

    outcome: str
    audit: AuditEvent | None = None
    reason: str = ""


class NotYetKnown(ValueError):
    """The line names a sign-up, booking or order that is not known (yet).

    Intake tries such a line again after the file's other lines, in event-time order, so a
    confirmation or cancellation written above its sign-up or booking still applies; if the
    target is still unknown, the line is rejected (and not recorded, so re-importing the
    file once its target has arrived applies it). The reason is safe to show.
    """
