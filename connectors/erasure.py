"""How a processor with an API erases a subject's data, and how we know it did (Art. 17, 19).

Each API processor's connector module declares ``ERASER``, an object with

- ``processor`` (its catalogue key) and ``asynchronous`` (True when the processor accepts a
  deletion with 202 and does it later);
- ``erase(client, target)``: asks the processor to erase; returns ``VERIFIED`` when the data
  already reads back as absent, ``AWAITING`` when an asynchronous deletion was accepted;
  raises ``NotVerified`` when a synchronous deletion does not read back as absent, a
  ``ProcessorError`` from the HTTP layer, or ValueError for a purpose it cannot address;
- ``verify(client, target)``: reads back; True only when the processor no longer holds it.

The erasure flow finds these through the catalogue (``eraser``, ``connect``): it names no
processor. Erasers are stateless; they know HTTP and their processor, nothing of the
database: what they need of the controller's records comes in ``Target.local``.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from core import catalogue

VERIFIED, AWAITING = "verified", "awaiting"


class NotVerified(Exception):
    """A synchronous deletion was sent but the data still reads back. Names no data."""


@dataclass(frozen=True)
class Target:
    """What is to be erased at one processor for one purpose, as an eraser needs it.

    `email` only for processors keyed by it; `local` holds the controller's records the
    catalogue's purpose asks for (``Purpose.local``), e.g. the subject's appointments as
    (our booking ref, TIMIFY's appointment id or None).
    """

    processor: str
    purpose: str
    external_id: str | None
    subject_id: uuid.UUID
    pseudonym: str
    email: str | None
    settings: Any = None
    local: tuple[tuple[str, str | None], ...] = ()

    def purpose_arg(self, prefix: str) -> str:
        """The part of the purpose after `prefix` ("video:B-1" → "B-1"); ValueError if absent."""
        if not self.purpose.startswith(prefix) or len(self.purpose) == len(prefix):
            raise ValueError(f"purpose of a {self.processor} task must start with {prefix!r}")
        return self.purpose[len(prefix) :]


class Eraser(Protocol):
    processor: str
    asynchronous: bool

    def erase(self, client: Any, target: Target) -> str: ...

    def verify(self, client: Any, target: Target) -> bool: ...


@cache
def _module(processor: str) -> Any:
    # Only catalogue keys with erasure through an API get here, never input from outside.
    return importlib.import_module(f"connectors.{processor}")


def erasers() -> Mapping[str, Eraser]:
    """Every API processor's eraser, by catalogue key."""
    return {key: _module(key).ERASER for key in catalogue.api_processors()}


def eraser(processor: str) -> Eraser | None:
    """The processor's eraser; None when the catalogue knows no API erasure for it."""
    known = catalogue.known(processor) and catalogue.processor(processor).erasure.mode == catalogue.Mode.api
    return _module(processor).ERASER if known else None


def connect(processor: str, settings: Any) -> Any:
    """The processor's configured client (its module's ``from_settings``)."""
    return _module(processor).from_settings(settings)
