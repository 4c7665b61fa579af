"""The baseline: the very same receiver batches, posted with a plain ``requests.Session``.

No retry layer, no audit, no database writes, no Prefect: one token, then one POST per batch
whose JSON answer is read (the sync needs the receiver ids from it too). Paced by the same
client-side rate limit as the sync (``bench.env.RATE_PER_SECOND``), so both run under one rule.
"""

from __future__ import annotations

import time

import requests

from bench.env import CLIENT_ID, CLIENT_SECRET, RATE_PER_SECOND
from connectors.transport import RateLimiter
from flows.newsletter import receiver_for
from models.consent import ConsentList, ConsentState, changed_since
from models.db import transaction


def load_payloads(list_name: str = ConsentList.newsletter) -> list[dict]:
    """The receivers the sync will push, in the order it pushes them (change order).

    Read with the sync's own query (``changed_since`` from the start) and built with its own
    ``receiver_for``, so both sides send byte-for-byte the same batches. Not timed.
    """
    with transaction() as session:
        rows = changed_since(session, list_name, 0, 2**62)
    return [receiver_for(list_name, r) for r in rows if r.state == ConsentState.confirmed and r.email]


def post_batches(sandbox_url: str, group: str, payloads: list[dict], batch_size: int) -> dict:
    """POST every batch; returns wall time, calls and receivers acknowledged."""
    root = f"{sandbox_url}/cleverreach"
    limiter = RateLimiter(RATE_PER_SECOND)
    with requests.Session() as session:
        started = time.perf_counter()
        token = session.post(
            f"{root}/oauth/token.php",
            auth=(CLIENT_ID, CLIENT_SECRET),
            json={"grant_type": "client_credentials"},
            timeout=30,
        )
        token.raise_for_status()
        session.headers["Authorization"] = "Bearer " + token.json()["access_token"]
        url = f"{root}/v3/groups.json/{group}/receivers/upsertplus"
        calls = acknowledged = 0
        for start in range(0, len(payloads), batch_size):
            limiter.acquire()
            response = session.post(url, json=payloads[start : start + batch_size], timeout=60)
            response.raise_for_status()
            acknowledged += len(response.json())
            calls += 1
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "calls": calls, "acknowledged": acknowledged}
