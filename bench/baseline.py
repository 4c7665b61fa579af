"""The baseline: the very same receiver batches, posted with a plain ``requests.Session``.

No retry layer, no rate limiter, no audit, no database writes, no Prefect: one token, then
one POST per batch whose JSON answer is read (the sync needs the receiver ids from it too).
"""

from __future__ import annotations

import time

import requests
from sqlmodel import select

from bench.env import CLIENT_ID, CLIENT_SECRET
from flows.newsletter import receiver_for
from models.consent import ConsentList, ConsentRecord, ConsentState
from models.db import transaction
from models.subjects import DataSubject


def load_payloads(list_name: str = ConsentList.newsletter) -> list[dict]:
    """The receivers the sync will push, in the order it pushes them (change order)."""
    with transaction() as session:
        rows = session.exec(
            select(ConsentRecord, DataSubject)
            .join(DataSubject, DataSubject.id == ConsentRecord.subject_id)
            .where(ConsentRecord.list_name == list_name, ConsentRecord.state == ConsentState.confirmed)
            .order_by(ConsentRecord.change_seq)
        ).all()
        return [receiver_for(list_name, record, subject) for record, subject in rows if subject.email]


def post_batches(sandbox_url: str, group: str, payloads: list[dict], batch_size: int) -> dict:
    """POST every batch; returns wall time, calls and receivers acknowledged."""
    root = f"{sandbox_url}/cleverreach"
    with requests.Session() as session:
        started = time.perf_counter()
        token = session.post(
            f"{root}/oauth/token.php", auth=(CLIENT_ID, CLIENT_SECRET),
            json={"grant_type": "client_credentials"}, timeout=30,
        )  # fmt: skip
        token.raise_for_status()
        session.headers["Authorization"] = "Bearer " + token.json()["access_token"]
        url = f"{root}/v3/groups.json/{group}/receivers/upsertplus"
        calls = acknowledged = 0
        for start in range(0, len(payloads), batch_size):
            response = session.post(url, json=payloads[start : start + batch_size], timeout=60)
            response.raise_for_status()
            acknowledged += len(response.json())
            calls += 1
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "calls": calls, "acknowledged": acknowledged}
