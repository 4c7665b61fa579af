"""Helpers shared by tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import requests

TEST_KEY = "test-pseudonym-key"


def sandbox_state(url: str) -> dict:
    """Everything the sandbox holds, as its control route reports it."""
    return requests.get(f"{url}/_sandbox/state", timeout=10).json()
