"""How a processor with an API corrects a subject's data and restricts its processing there
(Art. 16, 18, 19 GDPR).

Each API processor's connector module declares ``AMENDER`` (at its end), an object with

- ``processor`` (its catalogue key);
- ``names``: our field name → the processor's name for it (``email``, ``salutation``,
  ``first_name``, ``last_name``, ``phone``, ``birth_date``; ISO dates as text). Only the
  names the catalogue's allow-list for the purpose holds are ever sent (``permitted``);
- ``read(client, holder)``: what the processor holds now under our field names (only the
  fields it holds at all), or None when it holds nothing for that purpose;
- ``update(client, holder, changes)``: sends exactly `changes` (fields it holds, values
  that differ), nothing else; the caller reads back with ``read`` to verify;
- ``can_deactivate`` and ``deactivate(client, holder)`` / ``reactivate(client, holder)``:
  stop (and resume) processing there without deleting; True when read back as done.
  Where the API has no such call ``can_deactivate`` is False and the flow writes a letter.
- optionally ``locate(client, holder)``: the processor's id for the record, where the
  register may lack it (CleverReach: the push keeps no receiver id); the rectification
  keeps it in the register before it changes anything there (``flows.amend``).

The rectification and restriction flows (``flows/amend.py``) find these through the
catalogue (``amender``, ``connect``) like the erasure finds ``ERASER``: they name no
processor. Amenders know HTTP and their processor, nothing of the database: what they need of
the controller's records comes in the ``Holder``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from connectors.erasure import _module, connect
from core import catalogue

__all__ = ["FIELDS", "Amender", "Holder", "amender", "connect", "permitted"]

# The fields a rectification may correct (issue 18: e-mail, name, phone, birth date).
FIELDS = ("email", "salutation", "first_name", "last_name", "phone", "birth_date")


@dataclass(frozen=True)
class Holder:
    """Where the subject's data sits at one processor for one purpose.

    `email` is the address as the controller holds it before the change (a processor keyed
    by the address finds the record by it), `new_email` the corrected one while a change of
    address is under way (a repeated run finds the record under it). `external_id` is the
    processor's id from the register, when it named one.
    """

    processor: str
    purpose: str
    external_id: str | None
    subject_id: uuid.UUID
    pseudonym: str
    email: str | None
    new_email: str | None = None
    settings: Any = None

    def purpose_arg(self, prefix: str) -> str:
        """The part of the purpose after `prefix` ("video:B-1" → "B-1"); ValueError if absent."""
        if not self.purpose.startswith(prefix) or len(self.purpose) == len(prefix):
            raise ValueError(f"purpose of a {self.processor} record must start with {prefix!r}")
        return self.purpose[len(prefix) :]

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses the record may be found under, the current one first."""
        return tuple(dict.fromkeys(a for a in (self.email, self.new_email) if a))


class Amender(Protocol):
    processor: str
    names: Mapping[str, str]
    can_deactivate: bool

    def read(self, client: Any, holder: Holder) -> dict[str, str] | None: ...

    def update(self, client: Any, holder: Holder, changes: Mapping[str, str]) -> None: ...

    def deactivate(self, client: Any, holder: Holder) -> bool: ...

    def reactivate(self, client: Any, holder: Holder) -> bool: ...


def permitted(processor: str, purpose: str, names: Mapping[str, str]) -> frozenset[str]:
    """Our fields whose name at the processor its allow-list for `purpose` holds.

    >>> sorted(permitted("flexperto", "video:B-1", {"email": "email", "first_name": "name"}))
    ['email']
    """
    allowed = catalogue.allowed_fields(processor, purpose)
    return frozenset(ours for ours, theirs in names.items() if theirs in allowed)


def amender(processor: str) -> Amender | None:
    """The processor's amender; None when the catalogue knows no API for it."""
    known = catalogue.known(processor) and catalogue.processor(processor).erasure.mode == catalogue.Mode.api
    return getattr(_module(processor), "AMENDER", None) if known else None
