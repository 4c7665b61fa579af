"""In-memory Nect account: identification cases and their deletions.

Pure data and rules, no HTTP (the router and the whole ASSUMED contract are in
:mod:`sandbox.nect`). Three rules carry the point of this imitation:

- Nect gets nothing but our pseudonymous id (seed 002, 5.4.2: "Von uns erhält
  Nect lediglich eine pseudonyme ID-Nummer"): a case is opened from
  ``{"reference"}`` alone, the reference must look like one of our pseudonyms
  (32 lowercase hex), and any other key is refused.
- Opening is not repeatable: a second case for a reference that still has one
  answers 409, and ``creates`` counts per reference so a test can assert
  "exactly one case".
- Erasure is asynchronous: a deletion is pending until the second
  ``GET /v1/cases/{uuid}`` after the request (or the control route) completes it.

The identification itself happens between the person and Nect; the control
route ``complete`` stands in for it. The sandbox keeps no identity data at all.
"""

from __future__ import annotations

import re
import uuid

from sandbox.common import AsyncDeletions, bump
from sandbox.errors import StringCodeError, string_code_error_response

CASE_KEYS = frozenset({"reference"})
CREATED, COMPLETED, DELETION_PENDING = "created", "completed", "deletion_pending"
# Gets answered after a delete before it completes: the first still shows it pending.
GETS_UNTIL_DELETED = 2

_PSEUDONYM = re.compile(r"[0-9a-f]{32}")


class NectError(StringCodeError):
    """An error answered as ``{"error": {"code": "conflict", "message": "..."}}``.

    The string code derives from the HTTP status. Messages never quote the
    request: a wrongly sent reference could be personal data.
    """


# Nect's (assumed) error shape.
nect_error_response = string_code_error_response


def _reference(body: object) -> str:
    if not isinstance(body, dict):
        raise NectError(400, "expected an object")
    unknown = sorted(set(body) - CASE_KEYS)
    if unknown:
        # Key names only: their values are exactly what must not have been sent.
        raise NectError(400, f"unknown fields: {', '.join(unknown)}")
    reference = body.get("reference")
    if not isinstance(reference, str) or not _PSEUDONYM.fullmatch(reference):
        raise NectError(400, "reference must be a pseudonymous id (32 lowercase hex)")
    return reference


class NectState:
    """The whole imitated account. All mutations go through these methods."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty account; counters zero."""
        self.cases: dict[str, dict] = {}  # caseUuid -> the case as the API shows it
        self._by_reference: dict[str, str] = {}
        self.creates: dict[str, int] = {}  # reference -> successful creates
        self.calls: dict[str, int] = {}
        self.deletions = AsyncDeletions(self._remove, GETS_UNTIL_DELETED)

    # -- cases ------------------------------------------------------------
    def create_case(self, body: object) -> dict:
        """Open a case for a pseudonymous reference; 409 while the reference has one."""
        reference = _reference(body)
        if reference in self._by_reference:
            raise NectError(409, "a case with this reference exists")
        case_uuid = str(uuid.uuid4())
        case = {"caseUuid": case_uuid, "status": CREATED, "reference": reference}
        self.cases[case_uuid] = case
        self._by_reference[reference] = case_uuid
        bump(self.creates, reference)
        return case

    def find_cases(self, reference: str | None) -> list[dict]:
        """The case for that reference (zero or one, pending deletion included), or all."""
        if reference is None:
            return list(self.cases.values())
        case_uuid = self._by_reference.get(reference)
        return [self.cases[case_uuid]] if case_uuid else []

    def _case(self, case_uuid: str) -> dict:
        found = self.cases.get(case_uuid)
        if found is None:
            raise NectError(404, "case not found")
        return found

    def get_case(self, case_uuid: str) -> dict:
        """The case; the second get after a delete completes it and answers 404."""
        case = self._case(case_uuid)
        if self.deletions.read(case_uuid):
            raise NectError(404, "case not found")
        return case

    def delete_case(self, case_uuid: str) -> dict:
        """Accept an erasure (202 pending); asking again while pending changes nothing."""
        case = self._case(case_uuid)
        self.deletions.request(case_uuid)
        case["status"] = DELETION_PENDING
        return {"caseUuid": case_uuid, "status": DELETION_PENDING}

    def _remove(self, case_uuid: str) -> None:
        case = self.cases.pop(case_uuid)
        del self._by_reference[case["reference"]]

    # -- control ----------------------------------------------------------
    def complete(self, body: object) -> dict:
        """The person went through the identification: the case turns ``completed``."""
        if not isinstance(body, dict) or not isinstance(body.get("caseUuid"), str):
            raise NectError(400, "caseUuid is required")
        case = self._case(body["caseUuid"])
        if case["caseUuid"] in self.deletions.pending:
            raise NectError(409, "case deletion is pending")
        case["status"] = COMPLETED
        return case

    def complete_deletions(self) -> list[str]:
        """Complete every pending deletion now; return the case uuids."""
        return self.deletions.complete_all()

    def snapshot(self) -> dict:
        """State for ``GET /_sandbox/state``; shares live objects (no copies)."""
        return {
            "cases": self.cases,
            "creates": self.creates,
            "calls": self.calls,
            "deletions": self.deletions.snapshot(),
        }
