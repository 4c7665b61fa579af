"""The HTTP intake (``psync serve``) on a free loopback port in a thread, and a signed POST:
shared by tests/test_serve.py and the hostile-input suite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import requests

from psync.serve import DoorConfig, create_app, sign

from support import served


class Clock:
    """The door's clock, set by the test."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@contextmanager
def serve_door(config: DoorConfig, log_level: str = "warning", access_log: bool = False) -> Iterator[str]:
    """The door served over real HTTP until the block ends; yields its URL."""
    with served(create_app(config), "the door", log_level, access_log) as url:
        yield url


def post_signed(url: str, body, secret: bytes, at: datetime, **kw) -> requests.Response:
    """POST `body` (bytes, or JSON-encoded) to /v1/events, signed as sent at `at`."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ts = str(int(at.timestamp()))
    headers = {"Content-Type": "application/json", "X-Psync-Timestamp": ts, "X-Psync-Signature": sign(secret, ts, raw)}
    return requests.post(f"{url}/v1/events", data=raw, headers=headers, timeout=60, **kw)
