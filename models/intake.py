"""Intake: the controller's website hands events over as JSON lines; this validates and stores.

Each line is validated on its own by the pydantic models below (the same models give
``psync intake --schema``). A rejected line is reported with its number and a reason that
never repeats the input, and changes nothing. Storing is idempotent: every event has a keyed
content hash, and a line seen before is skipped.

Example::

    with transaction() as session:
        results = intake_lines(session, key, open("events.jsonl"), now=utcnow())
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from sqlalchemy import insert
from sqlmodel import Session, select

from models.audit import AuditEvent, append
from models.consent import (
    ConsentEvent,
    ConsentList,
    ConsentRecord,
    ConsentState,
    TransitionError,
    apply_confirm,
    apply_signup,
    apply_withdraw,
    event_key,
)
from models.cursors import next_seq
from models.identity import normalise_email, normalise_insurance_number, pseudonym
from models.subjects import DataSubject

Email = Annotated[str, Field(max_length=320), AfterValidator(normalise_email)]
InsuranceNumber = Annotated[str, AfterValidator(normalise_insurance_number)]
# A website clock a little ahead of ours is fine; a day ahead is a bug upstream.
FUTURE_TOLERANCE = timedelta(minutes=5)
CHUNK = 1000


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True)

    list_name: ConsentList = Field(alias="list")
    email: Email
    at: AwareDatetime = Field(description="ISO 8601 with a UTC offset")


class ConsentSignup(_Event):
    """A double-opt-in sign-up; the website has sent the confirmation mail."""

    type: Literal["consent.signup"]
    salutation: str | None = Field(default=None, max_length=40)
    first_name: str = Field(min_length=1, max_length=200)
    last_name: str = Field(min_length=1, max_length=200)
    insurance_number: InsuranceNumber | None = None
    ip: IPv4Address | IPv6Address
    source: str = Field(min_length=1, max_length=500)
    policy_version: str = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _insurance_number_fits_list(self) -> ConsentSignup:
        # Seed 000: the service-offers list is linked to the CRM by the insurance number;
        # the newsletter list is not, so it must not even be collected there.
        if self.list_name == ConsentList.service_offers and not self.insurance_number:
            raise ValueError("insurance_number is required for the service_offers list")
        if self.list_name == ConsentList.newsletter and self.insurance_number:
            raise ValueError("insurance_number is not collected for the newsletter list")
        return self


class ConsentConfirm(_Event):
    """The confirmation link in the double-opt-in mail was clicked."""

    type: Literal["consent.confirm"]
    ip: IPv4Address | IPv6Address


class ConsentWithdraw(_Event):
    """Consent withdrawn by e-mail to the controller or in the portal."""

    type: Literal["consent.withdraw"]
    channel: Literal["email", "portal"]


IntakeEvent = Annotated[
    ConsentSignup | ConsentConfirm | ConsentWithdraw, Field(discriminator="type")
]
EVENT_ADAPTER: TypeAdapter[IntakeEvent] = TypeAdapter(IntakeEvent)


def json_schema() -> dict:
    """The JSON Schema of one intake line."""
    return EVENT_ADAPTER.json_schema(by_alias=True)


@dataclass(frozen=True)
class LineResult:
    line: int
    outcome: str  # stored | duplicate | unchanged | rejected
    reason: str = ""


def describe(exc: ValidationError) -> str:
    """A reason per failed field, without ever quoting the input."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("consent."))
        msg = error["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_line(text: str) -> IntakeEvent:
    """Validate one line; raises ValueError with a PII-free reason."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("not valid JSON") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    try:
        return EVENT_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


def intake_lines(
    session: Session, key: bytes, lines: Iterable[str | bytes], now: datetime
) -> list[LineResult]:
    """Validate and store every line; returns one result per non-blank line. No commit.

    Lines may be bytes (a file opened in binary mode): a line that is not UTF-8 is then
    rejected on its own instead of failing the whole file.
    """
    results: list[LineResult] = []
    parsed: list[tuple[int, IntakeEvent]] = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            results.append(LineResult(number, "rejected", "not valid UTF-8"))
            continue
        if not text.strip():
            continue
        try:
            event = parse_line(text)
        except ValueError as exc:
            results.append(LineResult(number, "rejected", str(exc)))
            continue
        if event.at > now + FUTURE_TOLERANCE:
            results.append(LineResult(number, "rejected", "at: lies in the future"))
            continue
        parsed.append((number, event))
    store = _Store(session, key)
    for start in range(0, len(parsed), CHUNK):
        results.extend(store.apply_chunk(parsed[start : start + CHUNK]))
    results.sort(key=lambda r: r.line)
    append(session, key, store.audit)
    return results


class _Store:
    """Applies validated events in chunks, with the chunk's lookups fetched up front."""

    def __init__(self, session: Session, key: bytes):
        self.session, self.key = session, key
        self.by_email: dict[str, DataSubject] = {}
        self.by_kvnr: dict[str, DataSubject] = {}
        self.by_pseudonym: dict[str, DataSubject] = {}
        self.consents: dict[tuple[uuid.UUID, str], ConsentRecord] = {}
        self.audit: list[AuditEvent] = []
        self.events: list[ConsentEvent] = []

    def dedupe_key(self, event: IntakeEvent) -> str:
        return event_key(self.key, event.model_dump_json(by_alias=True))

    def apply_chunk(self, chunk: list[tuple[int, IntakeEvent]]) -> Iterator[LineResult]:
        keys = {number: self.dedupe_key(event) for number, event in chunk}
        seen = set(
            self.session.exec(
                select(ConsentEvent.dedupe_key).where(
                    ConsentEvent.dedupe_key.in_(list(keys.values()))  # type: ignore[attr-defined]
                )
            )
        )
        self._prefetch(event for _, event in chunk)
        seq = next_seq(self.session, "consent", len(chunk))
        for offset, (number, event) in enumerate(chunk):
            key = keys[number]
            if key in seen:
                yield LineResult(number, "duplicate")
                continue
            try:
                stored = self._apply(event, seq + offset, key)
                # Only an applied line makes a later identical one a duplicate.
                seen.add(key)
            except TransitionError as exc:
                yield LineResult(number, "rejected", str(exc))
                self.audit.append(
                    AuditEvent("intake.rejected", "rejected", detail=f"line {number}: {exc}")
                )
                continue
            yield LineResult(number, "stored" if stored else "unchanged")
        # Events go in with one INSERT after their records are flushed (no ORM relationship
        # orders them, and one statement per chunk is much faster than one per event).
        self.session.flush()
        if self.events:
            # render_nulls: rows with different None fields would otherwise each get an INSERT.
            self.session.execute(
                insert(ConsentEvent).execution_options(render_nulls=True),
                [e.model_dump(exclude={"id"}) for e in self.events],
            )
            self.events.clear()

    def _prefetch(self, events: Iterable[IntakeEvent]) -> None:
        emails, kvnrs = set(), set()
        for event in events:
            emails.add(event.email)
            if getattr(event, "insurance_number", None):
                kvnrs.add(event.insurance_number)
        emails -= self.by_email.keys()
        kvnrs -= self.by_kvnr.keys()
        found = []
        if emails:
            # By pseudonym as well: an erased subject keeps only that, and one who signs up
            # again is the same subject (the pseudonym is unique).
            pseudonyms = [pseudonym(self.key, "email", e) for e in emails]
            found += self.session.exec(
                select(DataSubject).where(
                    DataSubject.email.in_(emails)  # type: ignore[union-attr]
                    | DataSubject.pseudonym.in_(pseudonyms)  # type: ignore[attr-defined]
                )
            ).all()
        if kvnrs:
            found += self.session.exec(
                select(DataSubject).where(
                    DataSubject.insurance_number.in_(kvnrs)  # type: ignore[union-attr]
                )
            ).all()
        ids = {s.id for s in found}
        for subject in found:
            self._remember(subject)
        if ids:
            for record in self.session.exec(
                select(ConsentRecord).where(ConsentRecord.subject_id.in_(ids))  # type: ignore[attr-defined]
            ):
                self.consents[(record.subject_id, record.list_name)] = record

    def _remember(self, subject: DataSubject) -> None:
        self.by_pseudonym[subject.pseudonym] = subject
        if subject.email:
            self.by_email[subject.email] = subject
        if subject.insurance_number:
            self.by_kvnr[subject.insurance_number] = subject

    def _subject(self, email: str, kvnr: str | None, create: bool) -> DataSubject | None:
        by_email = self.by_email.get(email)
        by_kvnr = self.by_kvnr.get(kvnr) if kvnr else None
        if by_kvnr and by_kvnr.email and by_kvnr.email != email:
            # Someone else's number typed in, or a changed address: either way not ours to merge.
            raise TransitionError("insurance number is registered with another e-mail address")
        if kvnr and by_email and by_email.insurance_number not in (None, kvnr):
            raise TransitionError("e-mail address is registered with another insurance number")
        subject = by_email or by_kvnr
        if subject is None:
            subject = self.by_pseudonym.get(pseudonym(self.key, "email", email))
        if subject is None and create:
            subject = DataSubject(pseudonym=pseudonym(self.key, "email", email), email=email)
            self.session.add(subject)
        if subject is not None:
            if subject.email is None:  # new, or erased earlier and now back
                subject.email, subject.erased_at = email, None
            if kvnr and subject.insurance_number is None:
                subject.insurance_number = kvnr
            self._remember(subject)
        return subject

    def _apply(self, event: IntakeEvent, seq: int, key: str) -> bool:
        kvnr = getattr(event, "insurance_number", None)
        subject = self._subject(event.email, kvnr, create=isinstance(event, ConsentSignup))
        record = self.consents.get((subject.id, event.list_name)) if subject else None
        if isinstance(event, ConsentSignup):
            assert subject is not None
            if record is None:
                record = ConsentRecord(
                    subject_id=subject.id, list_name=event.list_name,
                    state=ConsentState.pending, signup_at=event.at,
                )  # fmt: skip
                self.session.add(record)
                self.consents[(subject.id, event.list_name)] = record
            stored = apply_signup(
                record, event.at, str(event.ip), event.source, event.policy_version, seq, key
            )
            if stored is not None:
                subject.salutation = event.salutation
                subject.first_name, subject.last_name = event.first_name, event.last_name
        elif isinstance(event, ConsentConfirm):
            stored = apply_confirm(record, event.at, str(event.ip), seq, key)
        else:
            if record is None:
                return False
            stored = apply_withdraw(record, event.at, event.channel, seq, key)
        if stored is None:
            return False
        self.events.append(stored)
        self.audit.append(
            AuditEvent(
                f"consent.{stored.kind}", "recorded", subject=subject.pseudonym,
                detail=f"list={event.list_name}",
            )  # fmt: skip
        )
        return True
