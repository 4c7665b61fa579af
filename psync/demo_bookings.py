"""The bookings part of ``psync demo``: book, reschedule, cancel, push, and purge chats.

A few hundred synthetic consultations over the next two weeks, a third by video; some are
moved and some cancelled; then the push, simulated video chats at Flexperto, and the daily
purge run with a settable clock: nothing is due before day 90, everything is gone after it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta

from psync.sandbox_env import SERVICE_POINTS

SLOTS = [(h, m) for h in range(8, 18) for m in (0, 15, 30, 45)]


def synthetic_bookings(n: int, seed: int, now: datetime) -> tuple[list[str], list[str]]:
    """Request lines for `n` bookings, and reschedule/cancel lines for some of them."""
    from faker import Faker

    from models.bookings import BERLIN
    from psync.demo_data import insurance_number

    fake, rng = Faker("de_DE"), random.Random(seed)
    Faker.seed(seed)
    today = now.astimezone(BERLIN).date()
    requests_, changes = [], []

    def start(days: int) -> str:
        hour, minute = rng.choice(SLOTS)
        day = today + timedelta(days=days)
        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=BERLIN).isoformat()

    for i in range(n):
        video = rng.random() < 0.35
        event = {
            "type": "booking.request",
            "booking_id": f"DEMO-{i:05d}",
            "channel": "video" if video else "branch",
            "start": start(rng.randrange(1, 15)),
            "duration_minutes": rng.choice([15, 30, 45, 60]),
            "salutation": rng.choice(["Frau", "Herr", "divers"]),
            "first_name": fake.first_name(),
            "last_name": fake.last_name(),
            "phone": f"+49 170 {rng.randrange(10**6, 10**7)}",
            "email": f"kunde.{i}@example.de",
            "at": now.isoformat(),
        }
        if not video:
            event["service_point"] = rng.choice(sorted(SERVICE_POINTS))
        # Seed 001: the insurance number or the birth date, whichever the customer gave.
        if rng.random() < 0.5:
            event["insurance_number"] = insurance_number(rng)
        else:
            event["birth_date"] = fake.date_of_birth(minimum_age=18, maximum_age=90).isoformat()
        if rng.random() < 0.3:
            event["concern"] = rng.choice(["Zahnersatz", "Krankengeld", "Familienversicherung"])
        requests_.append(json.dumps(event, ensure_ascii=False))
        roll = rng.random()
        if roll < 0.15:
            changes.append(
                json.dumps(
                    {
                        "type": "booking.reschedule",
                        "booking_id": event["booking_id"],
                        "start": start(rng.randrange(1, 15)),
                        "at": now.isoformat(),
                    }
                )
            )
        elif roll < 0.25:
            changes.append(
                json.dumps({"type": "booking.cancel", "booking_id": event["booking_id"], "at": now.isoformat()})
            )
    return requests_, changes


def run_bookings(base: str, key: bytes, n: int, seed: int) -> bool:
    """Intake, push, change, push, chats, purge; prints each step; True when both sides agree."""
    import requests

    from core.clock import berlin_today
    from core.settings import get_settings
    from flows import bookings
    from flows.intake import intake_lines
    from models.db import transaction
    from models.types import utcnow
    from psync.demo_data import step

    now = utcnow()
    service_points = get_settings().timify.service_points
    requested, changes = synthetic_bookings(n, seed, now)
    for lines in (requested, changes):
        with transaction() as session:
            results = intake_lines(session, key, lines, now=now, service_points=service_points)
        print(f"intake      {len(lines)} booking events: {dict(Counter(r.outcome for r in results))}")
        step("push", bookings.push_bookings())

    state = requests.get(f"{base}/_sandbox/state", timeout=30).json()
    for customer_id in state["flexperto"]["customers"]:  # every video consultation took place
        requests.post(
            f"{base}/_sandbox/flexperto/chats", json={"customer_id": customer_id, "at": now.isoformat()}, timeout=5
        )
    print(f"sandbox     {len(state['flexperto']['customers'])} video chats held at Flexperto")
    today = berlin_today(now)  # the Berlin calendar day the purge dates count in
    step("purge now", bookings.purge_video_chat_data(as_of=today))
    step("purge +120d", bookings.purge_video_chat_data(as_of=today + timedelta(days=120)))
    return _agree(base)


def _agree(base: str) -> bool:
    import requests
    from sqlmodel import select

    from models.bookings import Booking, BookingStatus
    from models.db import transaction

    state = requests.get(f"{base}/_sandbox/state", timeout=30).json()
    with transaction() as session:
        active = set(session.exec(select(Booking.booking_ref).where(Booking.status == BookingStatus.active)))
    at_timify = {a["externalId"] for a in state["timify"]["appointments"].values()}
    doubles = [k for k, v in state["timify"]["creates"]["appointments"].items() if v > 1]
    flexperto = state["flexperto"]
    print(
        f"bookings    local active {len(active)} | TIMIFY appointments {len(at_timify)}, "
        f"customers {len(state['timify']['customers'])}, created twice {len(doubles)} | "
        f"Flexperto customers {len(flexperto['customers'])}, archives {len(flexperto['archives'])}"
    )
    ok = active == at_timify and not doubles and not flexperto["customers"] and not flexperto["archives"]
    print("local active bookings == TIMIFY appointments, chats purged:", "yes" if ok else "NO")
    return ok
