"""The student-ID part of ``psync demo``: order, forward, issue, cancel, purge documents.

Small valid documents are generated on the fly (a one-page PDF, a PNG, a JPEG header): the
type checks go by content, so they must be real enough to pass them.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sqlmodel import col

from psync.demo_data import JPEG_BYTES, PDF_BYTES, PNG_BYTES, step


def synthetic_orders(n: int, seed: int, folder: Path) -> tuple[list[str], list[str], list[str]]:
    """Order lines with their documents written to `folder`, and two sets of cancellations:
    before forwarding, and after."""
    from faker import Faker

    from models.types import utcnow

    fake, rng, now = Faker("de_DE"), random.Random(seed), utcnow()
    Faker.seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    orders, early, late = [], [], []
    for i in range(n):
        ref = f"ISIC-{i:04d}"
        # Unique per order, so a name in a file name would be possible: we use the order id.
        for name, data in (
            (f"{ref}-nachweis.pdf", PDF_BYTES),
            (f"{ref}-ausweis.png", PNG_BYTES),
            (f"{ref}-foto.jpg", JPEG_BYTES + ref.encode()),
        ):
            (folder / name).write_bytes(data)
        orders.append(
            json.dumps(
                {
                    "type": "isic.order",
                    "order_id": ref,
                    "first_name": fake.first_name(),
                    "last_name": fake.last_name(),
                    "email": f"student.{i}@example.de",
                    "birth_date": fake.date_of_birth(minimum_age=17, maximum_age=28).isoformat(),
                    "postal_code": fake.postcode(),
                    "iban": fake.iban(),
                    "institution": rng.choice(["TU Berlin", "LMU München", "Universität Hamburg", "Gymnasium Altona"]),
                    "student_status": rng.choice(["student", "student", "pupil"]),
                    "phone_password": fake.password(length=10),
                    "at": now.isoformat(),
                    "documents": {
                        "student_proof": f"{ref}-nachweis.pdf",
                        "id_copy": f"{ref}-ausweis.png",
                        "photo": f"{ref}-foto.jpg",
                    },
                },
                ensure_ascii=False,
            )
        )
        roll = rng.random()
        cancel = json.dumps({"type": "isic.cancel", "order_id": ref, "at": now.isoformat()})
        if roll < 0.1:
            early.append(cancel)
        elif roll < 0.2:
            late.append(cancel)
    return orders, early, late


def run_student_ids(base: str, key: bytes, folder: Path, n: int, seed: int) -> bool:
    """Intake, forward, issue, cancel, follow, purge; True when both sides agree."""
    import requests

    from core.clock import berlin_today
    from core.settings import get_settings
    from flows import student_id
    from flows.intake import intake_lines
    from models.db import transaction
    from models.types import utcnow

    settings = get_settings()
    orders, early, late = synthetic_orders(n, seed, folder)

    def take_in(lines: list[str], what: str) -> None:
        with transaction() as session:
            results = intake_lines(
                session,
                key,
                lines,
                now=utcnow(),
                base_dir=folder,
                document_key=settings.document_key_bytes(),
            )
        print(f"intake      {len(lines)} {what}: {dict(Counter(r.outcome for r in results))}")

    take_in(orders + early, "student-ID orders and early cancellations")
    step("forward", student_id.forward_student_id_orders())
    requests.post(f"{base}/_sandbox/isic/issue", timeout=30).raise_for_status()
    print("sandbox     the issuer produced every requested card")
    step("status", student_id.sync_student_id_order_status())
    take_in(late, "late cancellations")
    step("forward", student_id.forward_student_id_orders())
    step("status", student_id.sync_student_id_order_status())
    step("status", student_id.sync_student_id_order_status())
    retention = settings.isic.document_retention_days
    # The Berlin calendar day, as the status sync counts the retention from (the machine's
    # own date is a day behind between midnight in Berlin and midnight UTC).
    today = berlin_today(utcnow())
    step(f"purge +{retention}d", student_id.purge_student_id_documents(as_of=today + timedelta(days=retention)))
    return _agree(base)


def _agree(base: str) -> bool:
    import requests
    from sqlmodel import func, select

    from models.db import transaction
    from models.isic import IsicDocument, IsicOrder, OrderStatus

    state = requests.get(f"{base}/_sandbox/state", timeout=30).json()["isic"]
    with transaction() as session:
        kept = set(session.exec(select(IsicOrder.order_ref).where(IsicOrder.status != OrderStatus.cancelled)))
        documents = session.exec(select(func.count()).select_from(IsicDocument)).one()
        cancelled_with_data = session.exec(
            select(func.count()).where(IsicOrder.status == OrderStatus.cancelled, col(IsicOrder.iban).is_not(None))
        ).one()
    doubles = [k for k, v in state["creates"]["cards"].items() if v > 1]
    print(
        f"student-ID  local orders kept {len(kept)} | issuer cardholders {len(state['cardholders'])}, "
        f"cards created twice {len(doubles)} | documents left here {documents}, "
        f"cancelled orders with data {cancelled_with_data}"
    )
    ok = kept == set(state["cardholders"]) and not doubles and documents == 0 and cancelled_with_data == 0
    print("issuer holds exactly the kept orders, documents purged, cancellations erased:", "yes" if ok else "NO")
    return ok
