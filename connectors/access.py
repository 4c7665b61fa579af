"""How a processor with an API says what it holds about a subject now (Art. 15 GDPR).

Each API processor's connector module declares ``READER`` (at its end), an object with

- ``processor`` (its catalogue key);
- ``read(client, target)``: what the processor holds for the subject and the target's purpose,
  read back through its API now, as plain JSON-able data; None when it holds nothing there.
  Raises a ``ProcessorError`` from the HTTP layer, or ValueError for a purpose it cannot
  address (a group not configured).

The access flow finds these through the catalogue (``reader``, and ``connectors.erasure.connect``
for the client), as the erasure flow finds ``ERASER``: it names no processor. The ``Target`` is
the erasure's (``connectors.erasure.Target``): the same ids address the same records. A reader
never writes, and returns only the record(s) of this subject: what a processor answers for a
filter it ignored is refused by the connectors' own checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from connectors.erasure import Target, _module
from core import catalogue

__all__ = ["Reader", "Target", "reader", "readers"]


class Reader(Protocol):
    processor: str

    def read(self, client: Any, target: Target) -> dict[str, Any] | None: ...


def readers() -> Mapping[str, Reader]:
    """Every API processor's reader, by catalogue key."""
    return {key: _module(key).READER for key in catalogue.api_processors()}


def reader(processor: str) -> Reader | None:
    """The processor's reader; None when the catalogue knows no API for it (a manual one)."""
    known = catalogue.known(processor) and catalogue.processor(processor).erasure.mode == catalogue.Mode.api
    return _module(processor).READER if known else None
