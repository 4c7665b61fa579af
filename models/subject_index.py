"""Finding the one data subject behind an intake event (matched on e-mail and insurance number).

The index is filled per chunk of events with two queries, then answers from memory, so an
intake of many lines costs a few statements per thousand lines instead of a few per line.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlmodel import Session, select

from models.identity import pseudonym
from models.subjects import DataSubject


class SubjectMismatch(ValueError):
    """The identifiers given point at two different people; nothing is merged."""


class SubjectIndex:
    def __init__(self, session: Session, key: bytes):
        self.session, self.key = session, key
        self.by_email: dict[str, DataSubject] = {}
        self.by_kvnr: dict[str, DataSubject] = {}
        self.by_pseudonym: dict[str, DataSubject] = {}

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
        for subject in found:
            self._remember(subject)
        return found

    def _remember(self, subject: DataSubject) -> None:
        self.by_pseudonym[subject.pseudonym] = subject
        if subject.email:
            self.by_email[subject.email] = subject
        if subject.insurance_number:
            self.by_kvnr[subject.insurance_number] = subject

    def resolve(self, email: str, kvnr: str | None, create: bool) -> DataSubject | None:
        """The subject with this e-mail (and insurance number), created when asked to.

        Raises SubjectMismatch when the two identifiers belong to different people.
        """
        by_email = self.by_email.get(email)
        by_kvnr = self.by_kvnr.get(kvnr) if kvnr else None
        if by_kvnr and by_kvnr.email and by_kvnr.email != email:
            # Someone else's number typed in, or a changed address: either way not ours to merge.
            raise SubjectMismatch("insurance number is registered with another e-mail address")
        if kvnr and by_email and by_email.insurance_number not in (None, kvnr):
            raise SubjectMismatch("e-mail address is registered with another insurance number")
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
