"""Finding the one data subject behind an intake event (matched on e-mail and insurance number).

The index is filled per chunk of events with two queries, then answers from memory, so an
intake of many lines costs a few statements per thousand lines instead of a few per line.

Finding a subject never writes to it. A store that applies a line's data calls ``identify``;
that is what brings an erased subject back (only with new data the person gave: a new
sign-up, booking or order dated after the erasure), and it never restores anything old.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from sqlmodel import Session, col, select

from models.identity import pseudonym
from models.subjects import DataSubject
from models.types import new_row


class SubjectMismatch(ValueError):
    """The identifiers given point at two different people; nothing is merged."""


def erased_before(subject: DataSubject | None, at: datetime) -> bool:
    """Whether `subject` is erased and the event at `at` is dated at or before that erasure:
    such a line is old data the erasure covered, and restores nothing."""
    return subject is not None and subject.erased_at is not None and at <= subject.erased_at


class SubjectIndex:
    def __init__(self, session: Session, key: bytes):
        self.session, self.key = session, key
        self.by_email: dict[str, DataSubject] = {}
        self.by_kvnr: dict[str, DataSubject] = {}
        self.by_pseudonym: dict[str, DataSubject] = {}
        # Called with an erased subject just before it comes back (``identify``), while its
        # ``erased_at`` is still set: the consent store keeps that cut in the history then.
        self.on_revive: list[Callable[[DataSubject], None]] = []

    def prefetch(self, pairs: Iterable[tuple[str, str | None]]) -> list[DataSubject]:
        """Load the subjects of these (e-mail, insurance number) pairs; returns the new ones."""
        emails, kvnrs = set(), set()
        for email, kvnr in pairs:
            emails.add(email)
            if kvnr:
                kvnrs.add(kvnr)
        emails -= self.by_email.keys()
        kvnrs -= self.by_kvnr.keys()
        found: list[DataSubject] = []
        if emails:
            # By pseudonym as well: an erased subject keeps only that, and one who comes
            # back is the same subject (the pseudonym is unique).
            pseudonyms = [pseudonym(self.key, "email", e) for e in emails]
            found += self.session.exec(
                select(DataSubject).where(
                    col(DataSubject.email).in_(emails) | col(DataSubject.pseudonym).in_(pseudonyms)
                )
            ).all()
        if kvnrs:
            found += self.session.exec(select(DataSubject).where(col(DataSubject.insurance_number).in_(kvnrs))).all()
        for subject in found:
            self._remember(subject)
        return found

    def _remember(self, subject: DataSubject) -> None:
        self.by_pseudonym[subject.pseudonym] = subject
        if subject.email:
            self.by_email[subject.email] = subject
        if subject.insurance_number:
            self.by_kvnr[subject.insurance_number] = subject

    def find(self, email: str, kvnr: str | None) -> DataSubject | None:
        """The subject with this e-mail (or insurance number, or the pseudonym of the e-mail,
        which is all an erased subject keeps), or None. Writes nothing.

        Raises SubjectMismatch when the two identifiers belong to different people.
        """
        by_email = self.by_email.get(email)
        by_kvnr = self.by_kvnr.get(kvnr) if kvnr else None
        if by_kvnr and by_kvnr.email and by_kvnr.email != email:
            # Someone else's number typed in, or a changed address: either way not ours to merge.
            raise SubjectMismatch("insurance number is registered with another e-mail address")
        if kvnr and by_email and by_email.insurance_number not in (None, kvnr):
            raise SubjectMismatch("e-mail address is registered with another insurance number")
        by_pseudonym = self.by_pseudonym.get(pseudonym(self.key, "email", email))
        if by_pseudonym is not None and by_pseudonym.email not in (None, email):
            # The pseudonym is of the address the subject was first seen with; one whose
            # address was corrected since (Art. 16) is no longer found under the old one.
            by_pseudonym = None
        return by_email or by_kvnr or by_pseudonym

    def create(self, email: str, kvnr: str | None, identified: bool = True) -> DataSubject:
        """A new subject; with `identified` False it holds only the pseudonym of the address
        (a withdrawal from someone we know nothing about needs no more)."""
        # new_row: SQLModel's __init__ was a third of a sign-up's cost.
        subject = new_row(DataSubject, pseudonym=pseudonym(self.key, "email", email))
        taken = self.by_pseudonym.get(subject.pseudonym)
        if taken is not None and taken.email not in (None, email):
            # The subject first seen with this address has had it corrected (Art. 16) and
            # keeps its pseudonym (the audit trail's name for it): this is someone new.
            subject.pseudonym = pseudonym(self.key, "email-reused", f"{email}#{subject.id}")
        self.session.add(subject)
        if identified:
            self.identify(subject, email, kvnr)
        self._remember(subject)
        return subject

    def identify(self, subject: DataSubject, email: str, kvnr: str | None) -> None:
        """Give the subject the identifiers of a line whose data is being applied.

        Only fills what is missing. An erased subject comes back here, and only here: its
        ``erased_at`` is cleared once the ``on_revive`` hooks have kept the cut.
        """
        if subject.erased_at is not None:
            for hook in self.on_revive:
                hook(subject)
            subject.erased_at = None
        if subject.email is None:
            subject.email = email
        if kvnr and subject.insurance_number is None:
            subject.insurance_number = kvnr
        self._remember(subject)

    def resolve(self, email: str, kvnr: str | None) -> DataSubject:
        """The subject of a line that brings new data (a booking, an order): found and
        identified, or created. The caller has checked ``erased_before`` first."""
        subject = self.find(email, kvnr)
        if subject is None:
            return self.create(email, kvnr)
        self.identify(subject, email, kvnr)
        return subject
