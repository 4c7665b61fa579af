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


def encode_form(events, files: dict[str, bytes]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body: the events as JSON in the part ``events``, each file in
    a part of its name; (body, Content-Type)."""
    from urllib3 import encode_multipart_formdata

    fields: dict = {"events": json.dumps(events)}
    fields.update({name: (f"{name}.bin", data, "application/octet-stream") for name, data in files.items()})
    return encode_multipart_formdata(fields)


def post_form(url: str, events, files: dict[str, bytes], secret: bytes, at: datetime, **kw) -> requests.Response:
    """POST the events and files as a signed ``multipart/form-data`` body to /v1/events."""
    body, content_type = encode_form(events, files)
    ts = str(int(at.timestamp()))
    headers = {"Content-Type": content_type, "X-Psync-Timestamp": ts, "X-Psync-Signature": sign(secret, ts, body)}
    return requests.post(f"{url}/v1/events", data=body, headers=headers, timeout=60, **kw)
