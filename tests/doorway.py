"""The HTTP intake (``psync serve``) on a free loopback port in a thread, and a signed POST:
shared by tests/test_serve.py and the hostile-input suite."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import requests
import uvicorn

from psync.serve import DoorConfig, create_app, sign


class Clock:
    """The door's clock, set by the test."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@contextmanager
def serve_door(config: DoorConfig, log_level: str = "warning", access_log: bool = False) -> Iterator[str]:
    """The door served over real HTTP until the block ends; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), host="127.0.0.1", port=port, log_level=log_level, access_log=access_log
    ))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the door did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def post_signed(url: str, body, secret: bytes, at: datetime, **kw) -> requests.Response:
    """POST `body` (bytes, or JSON-encoded) to /v1/events, signed as sent at `at`."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ts = str(int(at.timestamp()))
    headers = {"Content-Type": "application/json", "X-Psync-Timestamp": ts, "X-Psync-Signature": sign(secret, ts, raw)}
    return requests.post(f"{url}/v1/events", data=raw, headers=headers, timeout=60, **kw)
