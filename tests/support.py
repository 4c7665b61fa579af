"""Helpers shared by tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import requests

TEST_KEY = "test-pseudonym-key"


def sandbox_state(url: str) -> dict:
    """Everything the sandbox holds, as its control route reports it."""
    return requests.get(f"{url}/_sandbox/state", timeout=10).json()


# The smallest files each type check accepts: what the first bytes say is what counts.
PDF_BYTES = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"
