"""Helpers shared by tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import requests

from psync.demo_isic import JPEG_BYTES, PDF_BYTES, PNG_BYTES  # noqa: F401  (re-exported)

TEST_KEY = "test-pseudonym-key"


def sandbox_state(url: str) -> dict:
    """Everything the sandbox holds, as its control route reports it."""
    return requests.get(f"{url}/_sandbox/state", timeout=10).json()

