"""``psync demo``: the jobs end to end against a local sandbox.

Fresh SQLite database and Prefect home under ``.psync/demo/``, the sandbox in a background
process on a free loopback port, a few thousand synthetic German subjects, then the
newsletter flows in the order a day would run them, then a few hundred bookings
(``psync.demo_bookings``) and student-ID orders (``psync.demo_isic``), erasure requests for
people known to every processor (``psync.demo_erasure``), and summaries that compare both sides.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from psync.demo_data import insurance_number, step
from psync.sandbox_env import sandbox_environment

DEMO_DIR = Path(".psync/demo")
UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configure(port: int) -> None:
    """Point this process at the demo database, Prefect home and sandbox."""
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    os.environ.update(
        PREFECT_HOME=str((DEMO_DIR / "prefect").resolve()),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="WARNING",
        PSYNC_DATABASE_URL=f"sqlite:///{DEMO_DIR / 'psync.db'}",
        PSYNC_PSEUDONYM_KEY=os.urandom(16).hex(),
        PSYNC_DOCUMENT_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        **sandbox_environment(f"http://127.0.0.1:{port}", rate_per_second=200),
    )
    from core.settings import get_settings

    get_settings.cache_clear()


def _start_sandbox(port: int) -> subprocess.Popen:
    import requests

    process = subprocess.Popen(
        [sys.executable, "-m", "psync.cli", "sandbox", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/_sandbox/state", timeout=1)
            return process
        except requests.ConnectionError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the sandbox did not start within 30 s")


def synthetic_events(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Events for `n` synthetic subjects, and the e-mails that will unsubscribe at CleverReach.

    Mix: 72 % confirmed, 10 % pending (recent), 8 % pending for 23 or 40 days, 7 % confirmed
    then withdrawn, 3 % confirmed on both lists; a fifth on the service-offers list;
    4 % of confirmed newsletter readers later unsubscribe by link.
    """
    from faker import Faker

    from models.types import utcnow

    fake, rng, now = Faker("de_DE"), random.Random(seed), utcnow()
    Faker.seed(seed)
    lines: list[str] = []
    unsubscribers: list[str] = []

    def emit(**event):
        event["at"] = event["at"].isoformat()
        lines.append(json.dumps(event, ensure_ascii=False))

    for i in range(n):
        first, last = fake.first_name(), fake.last_name()
        local = re.sub(r"[^a-z0-9]+", ".", f"{first}.{last}".translate(UMLAUTS).lower())
        email = f"{local.strip('.')}.{i}@example.de"
        roll, which = rng.random(), rng.random()
        lists = ["newsletter"]
        if which < 0.2:
            lists = ["service_offers"]
        elif which >= 0.97:
            lists = ["newsletter", "service_offers"]
        kvnr = insurance_number(rng)
        # Unconfirmed for 23 days: past the 21 of service offers, not the 30 of the newsletter.
        stale = timedelta(days=rng.choice([23, 40]))
        age = stale if 0.82 <= roll < 0.90 else timedelta(hours=rng.randrange(2, 300))
        signed = now - age
        for list_name in lists:
            emit(
                type="consent.signup",
                list=list_name,
                email=email,
                salutation=rng.choice(["Frau", "Herr", None]),
                first_name=first,
                last_name=last,
                ip=fake.ipv4_public(),
                at=signed,
                source="https://www.example.de/newsletter",
                policy_version="2026-01",
                **({"insurance_number": kvnr} if list_name == "service_offers" else {}),
            )
            if 0.72 <= roll < 0.90:
                continue  # never confirmed
            emit(
                type="consent.confirm",
                list=list_name,
                email=email,
                ip=fake.ipv4_public(),
                at=signed + timedelta(minutes=rng.randrange(1, 60)),
            )
            if 0.90 <= roll < 0.97 and list_name == lists[0]:
                emit(
                    type="consent.withdraw",
                    list=list_name,
                    email=email,
                    channel=rng.choice(["email", "portal"]),
                    at=now - timedelta(minutes=1),
                )
            elif list_name == "newsletter" and rng.random() < 0.04:
                unsubscribers.append(email)
    return lines, unsubscribers


def run_demo(subjects: int = 3000, seed: int = 7, bookings: int = 300) -> int:
    """Run everything; returns 0 when local state and the sandbox agree and the audit verifies."""
    port = _free_port()
    _configure(port)
    started = time.monotonic()
    sandbox = _start_sandbox(port)
    try:
        return _run(port, subjects, seed, bookings, started)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)


def _run(port: int, subjects: int, seed: int, bookings: int, started: float) -> int:
    import requests
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from core.settings import get_settings
    from flows import newsletter
    from flows.intake import intake_lines
    from models.db import transaction
    from models.migrate import upgrade
    from models.types import utcnow
    from psync.demo_bookings import run_bookings
    from psync.demo_erasure import run_erasures
    from psync.demo_isic import run_student_ids

    key = get_settings().hmac_key()
    base = f"http://127.0.0.1:{port}"
    upgrade()
    lines, unsubscribers = synthetic_events(subjects, seed)
    (DEMO_DIR / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with transaction() as session:
        results = intake_lines(session, key, lines, now=utcnow())
    print(
        f"intake      {len(lines)} events from {subjects} synthetic subjects: "
        f"{dict(Counter(r.outcome for r in results))}"
    )

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        step("sync", newsletter.sync_newsletter_consents())
        for email in unsubscribers:  # readers clicking "abmelden" in a newsletter
            requests.post(f"{base}/_sandbox/cleverreach/unsubscribe", json={"email": email}, timeout=5)
        print(f"sandbox     {len(unsubscribers)} receivers unsubscribed by link at CleverReach")
        step("pull", newsletter.pull_newsletter_unsubscribes())
        step("sync", newsletter.sync_newsletter_consents())
        step("expire", newsletter.expire_unconfirmed_optins())
        step("sync again", newsletter.sync_newsletter_consents())
        print()
        # Another seed: the same one would repeat the subscribers' insurance numbers.
        bookings_ok = run_bookings(base, key, bookings, seed + 1)
        print()
        orders_ok = run_student_ids(base, key, DEMO_DIR / "isic", max(10, bookings // 5), seed)
        print()
        erased_ok = run_erasures(base, key, DEMO_DIR / "erasure")
    ok = _summary(base, key) and bookings_ok and orders_ok and erased_ok
    print(
        f"\n{'OK' if ok else 'MISMATCH'}: demo finished in {time.monotonic() - started:.1f} s "
        f"(database {DEMO_DIR / 'psync.db'}, events {DEMO_DIR / 'events.jsonl'})"
    )
    return 0 if ok else 1


def _summary(base: str, key: bytes) -> bool:
    import requests
    from sqlmodel import col, func, select

    from models.audit import verify
    from models.consent import ConsentRecord, ConsentState
    from models.db import transaction
    from models.subjects import DataSubject

    state = requests.get(f"{base}/_sandbox/state", timeout=30).json()["cleverreach"]
    print("\nlist            local: confirmed pending withdrawn expired | CleverReach: active inactive")
    ok = True
    with transaction() as session:
        for list_name, group in (("newsletter", "1001"), ("service_offers", "1002")):
            by_state = dict(
                session.exec(
                    select(ConsentRecord.state, func.count())
                    .where(ConsentRecord.list_name == list_name)
                    .group_by(ConsentRecord.state)
                ).all()
            )
            confirmed = set(
                session.exec(
                    select(DataSubject.email)
                    .join(ConsentRecord, col(ConsentRecord.subject_id) == col(DataSubject.id))
                    .where(ConsentRecord.list_name == list_name, ConsentRecord.state == ConsentState.confirmed)
                ).all()
            )
            receivers = state["groups"][group]["receivers"]
            active = {e for e, r in receivers.items() if r["active"]}
            print(
                f"{list_name:<15} {by_state.get('confirmed', 0):>16} {by_state.get('pending', 0):>7} "
                f"{by_state.get('withdrawn', 0):>9} {by_state.get('expired', 0):>7} | "
                f"{len(active):>18} {len(receivers) - len(active):>8}"
            )
            ok &= active == confirmed and len(receivers) == len(active)
        result = verify(session, key)
    print(
        f"\naudit trail {'verified' if result.ok else 'BROKEN'}: {result.checked} rows, hash chain intact"
        if result.ok
        else f"\naudit trail BROKEN at row {result.bad_id}: {result.reason}"
    )
    print("local confirmed == CleverReach active, nothing else held there:", "yes" if ok else "NO")
    return ok and result.ok
