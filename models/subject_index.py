"""Finding the one data subject behind an intake event (matched on e-mail and insurance number).

The index is filled per chunk of events with two queries, then answers from memory, so an
intake of many lines costs a few statements per thousand lines instead of a few per line.

Subjects are plain rows (``models.subjects.Subject``), written with Core by ``write``: new
ones inserted and changed ones updated, one statement each for all. They are written before
any ORM flush of the session (the rows other stores add name them), and the intake writes
them before each line of a store that reads them through the ORM (``intake.lines``).

Finding a subject never writes to it. A store that applies a line's data calls ``identify``;
that is what brings an erased subject back (only with new data the person gave: a new
sign-up, booking or order dated after the erasure), and it never restores anything old.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import bindparam, event
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from models.identity import pseudonym
from models.subjects import AddressAlias, DataSubject, Spans, Subject, holder_at, load_subjects, write_subjects
from models.types import utcnow


class SubjectMismatch(ValueError):
    """The identifiers given point at two different people; nothing is merged."""


def erased_before(subject: Subject | None, at: datetime) -> bool:
    """Whether `subject` is erased and the event at `at` is dated at or before that erasure:
    such a line is old data the erasure covered, and restores nothing."""
    return subject is not None and subject.erased_at is not None and at <= subject.erased_at


# The lists are bound when the query runs: a literal IN list is built again, value by value,
# for every chunk.
_BY_EMAIL = col(DataSubject.email).in_(bindparam("emails", expanding=True)) | col(DataSubject.pseudonym).in_(
    bindparam("pseudonyms", expanding=True)
)
_BY_KVNR = col(DataSubject.insurance_number).in_(bindparam("kvnrs", expanding=True))
_BY_ID = col(DataSubject.id).in_(bindparam("ids", expanding=True))
_ALIASES = sa_select(AddressAlias.pseudonym, AddressAlias.until, AddressAlias.subject_id).where(  # type: ignore[call-overload]  # sqlmodel's columns are typed as their values
    col(AddressAlias.pseudonym).in_(bindparam("pseudonyms", expanding=True))
)


class SubjectIndex:
    def __init__(self, session: Session, key: bytes):
        self.session, self.key = session, key
        self.by_id: dict[uuid.UUID, Subject] = {}
        self.by_email: dict[str, Subject] = {}
        self.by_kvnr: dict[str, Subject] = {}
        self.by_pseudonym: dict[str, Subject] = {}
        self.changed: dict[uuid.UUID, Subject] = {}  # to write: new, or with new values
        self.pseudonyms: dict[str, str] = {}  # of the addresses looked up in this intake
        # Addresses corrected or erased since (by pseudonym): whose until when (``AddressAlias``),
        # looked up once per address in this intake.
        self.aliases: dict[str, Spans] = {}
        # The clock read once per chunk (``prefetch``): the new subjects' ``created_at``.
        self.now: datetime | None = None
        # Called with an erased subject just before it comes back (``identify``), while its
        # ``erased_at`` is still set: the consent store keeps that cut in the history then.
        self.on_revive: list[Callable[[Subject], None]] = []
        # Rows the ORM flushes (a booking, a register row) may name a new subject.
        event.listen(session, "before_flush", self._before_flush)

    def _before_flush(self, session: Session, context: object, instances: object) -> None:
        self.write()

    def close(self) -> None:
        """Let go of the session's flush listener and the revive hooks. They and this index
        refer to each other: without this, the subjects and records of a chunk of intake
        stay alive until the cycle collector runs (``flows.intake.import_lines``)."""
        if event.contains(self.session, "before_flush", self._before_flush):
            event.remove(self.session, "before_flush", self._before_flush)
        self.on_revive.clear()

    def write(self) -> None:
        """Write the new and changed subjects (nothing when none is waiting)."""
        if self.changed:
            write_subjects(self.session, self.changed.values())
            self.changed.clear()

    def prefetch(self, pairs: Iterable[tuple[str, str | None]]) -> list[Subject]:
        """Load the subjects of these (e-mail, insurance number) pairs; returns the new ones.
        Called once per chunk: the clock is read here for the chunk's new subjects."""
        self.now = utcnow()
        emails, kvnrs = set(), set()
        for email, kvnr in pairs:
            emails.add(email)
            if kvnr:
                kvnrs.add(kvnr)
        loaded: list[Subject] = []
        # Whose each address was before a correction or an erasure: that holder comes before
        # whoever has the address now, for a line dated by then.
        loaded += self._load_aliases([p for p in map(self.pseudonym, emails) if p not in self.aliases])
        emails -= self.by_email.keys()
        kvnrs -= self.by_kvnr.keys()
        if emails:
            # By pseudonym as well: an erased subject keeps only that, and one who comes
            # back is the same subject (the pseudonym is unique).
            pseudonyms = [self.pseudonym(e) for e in emails]
            loaded += load_subjects(self.session, _BY_EMAIL, {"emails": list(emails), "pseudonyms": pseudonyms})
        if kvnrs:
            loaded += load_subjects(self.session, _BY_KVNR, {"kvnrs": list(kvnrs)})
        found: list[Subject] = []
        for subject in loaded:
            # One object per subject: the one already known keeps what this intake changed.
            subject = self.by_id.setdefault(subject.id, subject)
            self._remember(subject)
            found.append(subject)
        return found

    def _load_aliases(self, pseudonyms: list[str]) -> list[Subject]:
        """Remember the spans of these addresses (none for most); their subjects not known
        yet, loaded."""
        if not pseudonyms:
            return []
        for address in pseudonyms:
            self.aliases[address] = []
        wanted: set[uuid.UUID] = set()
        for address, until, subject_id in self.session.connection().execute(_ALIASES, {"pseudonyms": pseudonyms}):
            self.aliases[address].append((until, subject_id))
            if subject_id not in self.by_id:
                wanted.add(subject_id)
        for address in pseudonyms:
            self.aliases[address].sort()
        return load_subjects(self.session, _BY_ID, {"ids": list(wanted)}) if wanted else []

    def pseudonym(self, email: str) -> str:
        """The pseudonym of an address (``models.identity.pseudonym``), computed once."""
        found = self.pseudonyms.get(email)
        if found is None:
            found = self.pseudonyms[email] = pseudonym(self.key, "email", email)
        return found

    def _remember(self, subject: Subject) -> None:
        self.by_pseudonym[subject.pseudonym] = subject
        if subject.email:
            self.by_email[subject.email] = subject
        if subject.insurance_number:
            self.by_kvnr[subject.insurance_number] = subject

    def find(self, email: str, kvnr: str | None, at: datetime | None = None) -> Subject | None:
        """The subject with this e-mail (or insurance number, or the pseudonym of the e-mail,
        which is all an erased subject keeps), or None. Writes nothing. With the line's time
        `at`, an address corrected or erased since finds the subject it belonged to then
        (``AddressAlias``), whoever has it now: the person's line dated before.

        Raises SubjectMismatch when the two identifiers belong to different people.
        """
        former = None
        if at is not None and (spans := self.aliases.get(self.pseudonym(email))):
            former = holder_at(spans, at)
        by_email = self.by_id.get(former) if former is not None else self.by_email.get(email)
        by_kvnr = self.by_kvnr.get(kvnr) if kvnr else None
        if by_kvnr and by_kvnr.email and by_kvnr.email != email and by_kvnr is not by_email:
            # Someone else's number typed in, or a changed address: either way not ours to merge.
            raise SubjectMismatch("insurance number is registered with another e-mail address")
        if kvnr and by_email and by_email.insurance_number not in (None, kvnr):
            raise SubjectMismatch("e-mail address is registered with another insurance number")
        by_pseudonym = self.by_pseudonym.get(self.pseudonym(email))
        if by_pseudonym is not None and by_pseudonym.email not in (None, email):
            # The pseudonym is of the address the subject was first seen with; one whose
            # address was corrected since (Art. 16) is no longer found under the old one.
            by_pseudonym = None
        return by_email or by_kvnr or by_pseudonym

    def create(self, email: str, kvnr: str | None, identified: bool = True) -> Subject:
        """A new subject; with `identified` False it holds only the pseudonym of the address
        (a withdrawal from someone we know nothing about needs no more). Written by ``write``."""
        subject = Subject.new(self.pseudonym(email), self.now)
        taken = self.by_pseudonym.get(subject.pseudonym)
        if taken is not None and taken.email not in (None, email):
            # The subject first seen with this address has had it corrected (Art. 16) and
            # keeps its pseudonym (the audit trail's name for it): this is someone new.
            subject.pseudonym = pseudonym(self.key, "email-reused", f"{email}#{subject.id}")
        self.by_id[subject.id] = subject
        self.changed[subject.id] = subject
        if identified:
            self.identify(subject, email, kvnr)
        self._remember(subject)
        return subject

    def identify(self, subject: Subject, email: str, kvnr: str | None) -> None:
        """Give the subject the identifiers of a line whose data is being applied.

        Only fills what is missing. An erased subject comes back here, and only here: its
        ``erased_at`` is cleared once the ``on_revive`` hooks have kept the cut.
        """
        if subject.erased_at is not None:
            for hook in self.on_revive:
                hook(subject)
            subject.erased_at = None
            self.changed[subject.id] = subject
        if subject.email is None:
            subject.email = email
            self.changed[subject.id] = subject
        if kvnr and subject.insurance_number is None:
            subject.insurance_number = kvnr
            self.changed[subject.id] = subject
        self._remember(subject)

    def name(self, subject: Subject, salutation: str | None, first_name: str, last_name: str) -> None:
        """Give the subject the names of a line whose data is being applied."""
        if (subject.salutation, subject.first_name, subject.last_name) != (salutation, first_name, last_name):
            subject.salutation, subject.first_name, subject.last_name = salutation, first_name, last_name
            self.changed[subject.id] = subject

    def resolve(self, email: str, kvnr: str | None, at: datetime | None = None) -> Subject:
        """The subject of a line that brings new data (a booking, an order) dated `at`: found
        and identified, or created. The caller has checked ``erased_before`` first."""
        subject = self.find(email, kvnr, at)
        if subject is None:
            return self.create(email, kvnr)
        self.identify(subject, email, kvnr)
        return subject
