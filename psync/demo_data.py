"""What the parts of ``psync demo`` share: synthetic identifiers, tiny valid documents, and the
one-line progress report. Imports no demo module, so the parts (``demo_bookings``,
``demo_isic``, ``demo_erasure``) depend on it and ``psync.demo`` on them, never back.
"""

from __future__ import annotations

import random

# The smallest files each type check accepts: what the first bytes say is what counts.
PDF_BYTES = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"


def insurance_number(rng: random.Random) -> str:
    """A synthetic health-insurance number with a correct check digit."""
    from models.identity import insurance_number_valid

    stem = rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + f"{rng.randrange(10**8):08d}"
    return next(stem + d for d in "0123456789" if insurance_number_valid(stem + d))


def step(name: str, counts: dict) -> None:
    """One line of the demo's progress: a step's name and its counts."""
    print(f"{name:<11} {counts or 'nothing to do'}")
