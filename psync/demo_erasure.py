"""The erasure part of ``psync demo``: a few people known to every processor are erased.

Each person subscribes to the newsletter, books a video consultation, orders a student ID
(issued) and goes through an identification at Nect; then the officer's request fans out to
all five processors at once, the follow-up reads back the asynchronous deletions, and the
Art. 19 report of each request is printed.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from sqlmodel import col

from models.types import BERLIN
from psync.demo_data import JPEG_BYTES, PDF_BYTES, PNG_BYTES, step

PEOPLE = [
    ("loesch.eins@example.de", "Greta", "Löschmann", "+49 170 5550111", "DE02120300000000202051"),
    ("loesch.zwei@example.de", "Hannes", "Vergessen", "+49 170 5550222", "DE89370400440532013000"),
    ("loesch.drei@example.de", "Ida", "Austrag", "+49 170 5550333", "DE02500105170137075030"),
]


def _lines(i: int, email: str, first: str, last: str, phone: str, iban: str, now) -> list[dict]:
    at = (now - timedelta(hours=3)).isoformat()
    day = (now + timedelta(days=3)).astimezone(BERLIN).date()
    start = datetime(day.year, day.month, day.day, 10, 0, tzinfo=BERLIN)  # Berlin wall clock, as the website sends it
    name = {"first_name": first, "last_name": last}
    return [
        {
            "type": "consent.signup",
            "list": "newsletter",
            "email": email,
            "salutation": "Frau",
            **name,
            "ip": "192.0.2.50",
            "at": at,
            "source": "https://www.example.de/newsletter",
            "policy_version": "2026-01",
        },
        {
            "type": "consent.confirm",
            "list": "newsletter",
            "email": email,
            "ip": "192.0.2.51",
            "at": (now - timedelta(hours=2)).isoformat(),
        },
        {
            "type": "booking.request",
            "booking_id": f"ERASE-V{i}",
            "channel": "video",
            "start": start.isoformat(),
            "duration_minutes": 30,
            "salutation": "divers",
            **name,
            "phone": phone,
            "email": email,
            "birth_date": "2003-05-17",
            "at": at,
        },
        {
            "type": "isic.order",
            "order_id": f"ERASE-I{i}",
            **name,
            "birth_date": "2003-05-17",
            "email": email,
            "postal_code": "20095",
            "iban": iban,
            "institution": "Universität Hamburg",
            "at": at,
            "documents": {
                "student_proof": "erase-nachweis.pdf",
                "id_copy": "erase-ausweis.png",
                "photo": "erase-foto.jpg",
            },
        },
    ]


def seed_everywhere(base: str, key: bytes, folder: Path, people: list[tuple[str, str, str, str, str]] = PEOPLE) -> None:
    """Put `people` at all five processors through the real intake and flows."""
    import requests
    from sqlmodel import select

    from connectors import nect
    from core.settings import get_settings
    from flows import bookings, newsletter, student_id
    from flows.intake import intake_lines
    from models.db import transaction
    from models.subjects import DataSubject
    from models.types import utcnow

    settings, now = get_settings(), utcnow()
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("erase-nachweis.pdf", PDF_BYTES),
        ("erase-ausweis.png", PNG_BYTES),
        ("erase-foto.jpg", JPEG_BYTES),
    ):
        (folder / name).write_bytes(data)
    lines = [json.dumps(e, ensure_ascii=False) for i, p in enumerate(people) for e in _lines(i, *p, now)]
    with transaction() as session:
        intake_lines(
            session,
            key,
            lines,
            now=now,
            service_points=settings.timify.service_points,
            base_dir=folder,
            document_key=settings.document_key_bytes(),
        )
    newsletter.sync_newsletter_consents()
    bookings.push_bookings()
    student_id.forward_student_id_orders()
    requests.post(f"{base}/_sandbox/isic/issue", timeout=30).raise_for_status()
    student_id.sync_student_id_order_status()
    client = nect.from_settings(settings)
    with transaction() as session:
        subjects = session.exec(select(DataSubject).where(col(DataSubject.email).in_([p[0] for p in people]))).all()
        # The portal identifies each at Nect, which gets only the pseudonym (seed 002, 5.4.2),
        # and hands the case over as an intake line; the register then names Nect.
        cases = [
            json.dumps(
                {
                    "type": "ident.case",
                    "email": s.email,
                    "case_id": client.open_case(s.pseudonym),
                    "at": now.isoformat(),
                }
            )
            for s in subjects
        ]
        results = intake_lines(session, key, cases, now=now)
    assert {r.outcome for r in results} == {"stored"}, [r.reason for r in results]


def run_erasures(base: str, key: bytes, folder: Path) -> bool:
    """Seed the people everywhere, erase them, print their reports; True when nothing is left."""
    import requests

    from flows.erasure import (
        confirm_manual,
        fan_out_erasure,
        follow_up_erasures,
        manual_requests,
        open_erasure_request,
        render_markdown,
        report,
    )
    from models.db import transaction
    from models.types import utcnow

    seed_everywhere(base, key, folder)
    print(f"scene       {len(PEOPLE)} people at CleverReach, TIMIFY, Flexperto, the ISIC issuer and Nect")

    request_ids = []
    for email, *_ in PEOPLE:
        with transaction() as session:
            request_ids.append(
                open_erasure_request(session, email=email, channel="letter", reference="Demo-Löschung").id
            )
        try:
            step("erase", fan_out_erasure(request_id=str(request_ids[-1])))
        except Exception as exc:  # noqa: BLE001 - a processor still open is visible, and followed up below
            print(f"erase       run failed visibly: {type(exc).__name__}")
    # USU builds the newsletter on CleverReach's data and has no API: the officer sends the
    # generated letter and confirms USU's answer with evidence (here at once, for the demo).
    with transaction() as session:
        manual = [item for rid in request_ids for item in manual_requests(session, rid)]
    for item in manual:
        with transaction() as session:
            confirm_manual(session, item["task_id"], "Demo: Bestätigung per E-Mail", utcnow())
    print(f"manual      {len(manual)} request(s) to {', '.join(sorted({i['processor'] for i in manual}))} confirmed")
    step("follow-up", follow_up_erasures())
    with transaction() as session:
        reports = [report(session, rid) for rid in request_ids]
    print("\n" + render_markdown(reports[0]))
    state = requests.get(f"{base}/_sandbox/state", timeout=30).json()
    text = json.dumps({k: state[k] for k in ("cleverreach", "timify", "flexperto", "isic", "nect")}, ensure_ascii=False)
    # Their e-mail, family name, phone and IBAN (a first name like Greta others have too).
    left = [p[0] for p in PEOPLE if any(m in text for m in (p[0], p[2], p[3][-7:], p[4]))]
    done = sum(1 for r in reports if r["status"] == "completed")
    print(f"erasure     requests completed {done}/{len(reports)}; people still findable at a processor: {len(left)}")
    return done == len(reports) and not left
