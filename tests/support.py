"""Helpers shared by tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from psync.demo_data import JPEG_BYTES, PDF_BYTES, PNG_BYTES  # noqa: F401  (re-exported)

TEST_KEY = "test-pseudonym-key"


def isic_order(order_id: str, at: str, **fields) -> dict:
    """A student-ID order line (Lena Studentin), `fields` (documents, ...) added or replaced."""
    return {
        "type": "isic.order",
        "order_id": order_id,
        "first_name": "Lena",
        "last_name": "Studentin",
        "birth_date": "2004-02-29",
        "email": "lena@example.de",
        "postal_code": "10115",
        "iban": "DE89 3704 0044 0532 0130 00",
        "institution": "Humboldt-Universität zu Berlin",
        "at": at,
        **fields,
    }


def sandbox_state(url: str) -> dict:
    """Everything the sandbox holds, as its control route reports it."""
    return requests.get(f"{url}/_sandbox/state", timeout=10).json()


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(app, what: str, log_level: str = "warning", access_log: bool = False) -> Iterator[str]:
    """An ASGI app served over real HTTP on a free loopback port, in a thread, until the
    block ends; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, access_log=access_log)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def receivers_sent(details) -> int:
    """Receivers carried by newsletter "sent" audit rows (one per upsert call), from their
    details (``receivers=N <list>``)."""
    total = 0
    for detail in details:
        key, _, value = detail.split()[0].partition("=")
        assert key == "receivers", detail
        total += int(value)
    return total


def confirm_manual_tasks(request_ids=None, evidence: str = "Bestätigung per E-Mail vom 3. März") -> int:
    """A person confirms every manual erasure task (of these requests, or of all): USU, who
    builds the newsletter on CleverReach's data, is a recipient whenever CleverReach is
    (core.catalogue), and has no API. Returns how many were confirmed."""
    from sqlmodel import col, select

    from flows import erasure
    from models.db import transaction
    from models.erasure import ErasureTask, TaskState
    from models.types import utcnow

    with transaction() as session:
        query = select(ErasureTask.id).where(ErasureTask.state == TaskState.manual_pending)
        if request_ids is not None:
            query = query.where(col(ErasureTask.request_id).in_(list(request_ids)))
        pending = list(session.exec(query))
    for task_id in pending:
        with transaction() as session:
            erasure.confirm_manual(session, task_id, evidence, utcnow())
    return len(pending)
