"""Confirmed newsletter subscriptions written straight to the database: intake's rows, not its cost.

Intake stores about 2,600 lines a second (validation, one ORM object per row), so a million
sign-ups and confirmations would take 13 minutes before a benchmark even starts. This writes
the rows that intake writes for ``bench.seed.signup_confirm_events`` (subjects, consent
records, their sign-up and confirmation events with the proof of consent, the ``consent``
counter, the audit rows) with the driver's ``executemany``, a slice per transaction as the
intake benchmark does it, so the sync then reads what it would read after a real intake.

What stays the project's own code: the pseudonyms (``models.identity.pseudonym``), the
events' dedupe keys (``event_key`` over the intake models' own JSON), the change numbers
(``next_seq``), the audit chain (``models.audit.append``) and every column's type handling
(``models.db.insert_many``). ``compare_with_intake`` checks the claim on a sample: the
same subjects seeded both ways give the same rows and the same pushed payloads.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import text
from sqlmodel import Session

from bench import seed
from core.settings import get_settings
from flows.newsletter import receiver_for
from intake.consent import ConsentConfirm, ConsentSignup
from intake.lines import EVENT_ADAPTER
from models.audit import AuditEvent, append, verify
from models.consent import ConsentEvent, ConsentList, ConsentRecord, ConsentState, EventKind, changed_since
from models.cursors import next_seq
from models.db import get_engine, insert_many, transaction
from models.identity import pseudonym
from models.migrate import upgrade
from models.subjects import DataSubject
from models.types import event_key, new_id, utcnow

_SUBJECTS = DataSubject.__table__.insert()  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
_CONSENTS = ConsentRecord.__table__.insert()  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
_EVENTS = ConsentEvent.__table__.insert()  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
# Every this many subjects, the dedupe keys are also computed from the real validator's
# events and must be the same (``model_construct`` skips validation, and so its normalising).
SPOT_CHECK_EVERY = 1000
SEED_CACHE_MB = 512


def _dedupe_keys(key: bytes, signup: dict, confirm: dict, check: bool) -> tuple[str, str]:
    """The dedupe keys intake gives these two lines: ``event_key`` over the parsed event's JSON.

    The events are built without validation (a fifth of the validator's cost); with `check`,
    the real validator parses the lines as well and must give the very same JSON.
    """
    signup_event = ConsentSignup.model_construct(
        type=signup["type"],
        list_name=ConsentList(signup["list"]),
        email=signup["email"],
        at=datetime.fromisoformat(signup["at"]),
        salutation=signup["salutation"],
        first_name=signup["first_name"],
        last_name=signup["last_name"],
        ip=signup["ip"],  # the text intake stores (``intake.types.IpAddress``)
        source=signup["source"],
        policy_version=signup["policy_version"],
    )
    confirm_event = ConsentConfirm.model_construct(
        type=confirm["type"],
        list_name=ConsentList(confirm["list"]),
        email=confirm["email"],
        at=datetime.fromisoformat(confirm["at"]),
        ip=confirm["ip"],
    )
    dumps = [e.model_dump_json(by_alias=True) for e in (signup_event, confirm_event)]
    if check and dumps != [EVENT_ADAPTER.validate_python(e).model_dump_json(by_alias=True) for e in (signup, confirm)]:
        raise RuntimeError(f"direct seeding: {signup['email']!r} differs from what intake would store")
    return event_key(key, dumps[0]), event_key(key, dumps[1])


def write_slice(session: Session, key: bytes, start: int, stop: int, base: datetime) -> int:
    """Subjects start..stop-1 as intake would store them in one transaction; returns how many."""
    now = utcnow()
    first_seq = next_seq(session, "consent", 2 * (stop - start))
    subjects, consents, events, audit = [], [], [], []
    for offset, (signup, confirm) in enumerate(seed.signup_confirm_events(start, stop, base)):
        address = signup["email"]  # already in normal form (checked by the spot checks)
        signup_key, confirm_key = _dedupe_keys(key, signup, confirm, (start + offset) % SPOT_CHECK_EVERY == 0)
        subject_id, consent_id, name = new_id(), new_id(), pseudonym(key, "email", address)
        signup_at, confirm_at = datetime.fromisoformat(signup["at"]), datetime.fromisoformat(confirm["at"])
        subjects.append((subject_id, name, address, signup["salutation"], signup["first_name"], signup["last_name"]))
        consents.append(
            (
                consent_id,
                subject_id,
                signup_at,
                signup["ip"],
                signup["source"],
                signup["policy_version"],
                confirm_at,
                confirm["ip"],
                first_seq + 2 * offset + 1,
            )
        )
        events.append(
            (
                consent_id,
                EventKind.signup,
                signup_at,
                signup["ip"],
                signup["source"],
                signup["policy_version"],
                signup_key,
            )
        )
        events.append((consent_id, EventKind.confirm, confirm_at, confirm["ip"], None, None, confirm_key))
        for kind in (EventKind.signup, EventKind.confirm):
            audit.append(AuditEvent(f"consent.{kind}", "recorded", subject=name, detail=f"list={signup['list']}"))
    insert_many(
        session,
        _SUBJECTS,
        ("id", "pseudonym", "email", "salutation", "first_name", "last_name"),
        subjects,
        {"created_at": now},
    )
    insert_many(
        session,
        _CONSENTS,
        (
            "id",
            "subject_id",
            "signup_at",
            "signup_ip",
            "source",
            "policy_version",
            "confirm_at",
            "confirm_ip",
            "change_seq",
        ),
        consents,
        {"list_name": seed.LIST, "state": ConsentState.confirmed, "updated_at": now},
    )
    insert_many(
        session,
        _EVENTS,
        ("consent_id", "kind", "at", "ip", "source", "policy_version", "dedupe_key"),
        events,
        {"recorded_at": now},
    )
    append(session, key, audit)
    return len(subjects)


def seed_direct(n: int, slice_subjects: int, url: str | None = None, base: datetime | None = None) -> int:
    """N confirmed subscriptions, `slice_subjects` per transaction (as ``bench.seed.seed``)."""
    key, base = get_settings().hmac_key(), base or seed.signup_base()
    written = 0
    for start in range(0, n, slice_subjects):
        # A bigger page cache for each slice: the unique indexes on random keys (pseudonym,
        # dedupe key) re-read a page per row once they outgrow SQLite's default 2 MB.
        with transaction(url, cache_mb=SEED_CACHE_MB) as session:
            written += write_slice(session, key, start, min(n, start + slice_subjects), base)
    return written


# the check -----------------------------------------------------------------------------
def _payloads(url: str) -> list[dict]:
    """What a full sync pushes, in its order: ``changed_since`` from 0 through ``receiver_for``."""
    with transaction(url) as session:
        rows = changed_since(session, ConsentList.newsletter, 0, 2**62)
    return [receiver_for(ConsentList.newsletter, r) for r in rows if r.state == ConsentState.confirmed and r.email]


# Wall-clock stamps of the write itself and fresh ids differ by nature; everything else must not.
_ROWS = {
    "data_subject": "SELECT pseudonym, email, insurance_number, salutation, first_name, last_name, erased_at "
    "FROM data_subject ORDER BY pseudonym",
    "consent": "SELECT s.pseudonym, c.list_name, c.state, c.signup_at, c.signup_ip, c.source, c.policy_version, "
    "c.confirm_at, c.confirm_ip, c.withdrawn_at, c.withdraw_channel, c.expired_at, c.change_seq "
    "FROM consent c JOIN data_subject s ON s.id = c.subject_id ORDER BY c.change_seq",
    "consent_event": "SELECT e.id, s.pseudonym, e.kind, e.at, e.ip, e.channel, e.source, e.policy_version, "
    "e.dedupe_key FROM consent_event e JOIN consent c ON c.id = e.consent_id "
    "JOIN data_subject s ON s.id = c.subject_id ORDER BY e.id",
    "counter": "SELECT name, value FROM counter ORDER BY name",
    "audit_entry": "SELECT id, flow_run_id, action, processor, subject_pseudonym, outcome, attempts, "
    "http_status, detail FROM audit_entry ORDER BY id",
    "audit_head": "SELECT id, last_id FROM audit_head",
}


def _snapshot(url: str) -> dict[str, list]:
    key = get_settings().hmac_key()
    with transaction(url) as session:
        rows = {name: [tuple(r) for r in session.execute(text(sql))] for name, sql in _ROWS.items()}
        # Every other table must be as empty as intake leaves it.
        tables = [r[0] for r in session.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))]
        rows["row_counts"] = sorted((t, session.execute(text(f'SELECT count(*) FROM "{t}"')).scalar()) for t in tables)
        chain = verify(session, key)
        rows["audit_chain"] = [(chain.ok, chain.checked)]
    return rows


def compare_with_intake(folder: Path, n: int = 1000, slice_subjects: int = 400) -> dict:
    """Seed the same `n` subjects through intake and directly into two fresh SQLite files, then
    compare the payloads a full sync would push and every row but wall-clock stamps and ids.

    Raises RuntimeError naming what differs; returns what was compared.
    """
    folder.mkdir(parents=True, exist_ok=True)
    urls = {way: f"sqlite:///{folder / f'compare-{way}.db'}" for way in ("intake", "direct")}
    for url in urls.values():
        upgrade(url)
    base = seed.signup_base()
    outcomes = seed.seed(n, slice_subjects, url=urls["intake"], base=base)
    if outcomes.get("stored") != 2 * n:
        raise RuntimeError(f"intake stored {dict(outcomes)} of {2 * n} lines")
    seed_direct(n, slice_subjects, url=urls["direct"], base=base)
    payloads = {way: _payloads(url) for way, url in urls.items()}
    if payloads["intake"] != payloads["direct"] or len(payloads["direct"]) != n:
        raise RuntimeError("direct seeding: the pushed payloads differ from intake's")
    snapshots = {way: _snapshot(url) for way, url in urls.items()}
    differ = [name for name in _ROWS if snapshots["intake"][name] != snapshots["direct"][name]]
    differ += [name for name in ("row_counts", "audit_chain") if snapshots["intake"][name] != snapshots["direct"][name]]
    if differ or not snapshots["direct"]["audit_chain"][0][0]:
        raise RuntimeError(f"direct seeding differs from intake in: {', '.join(differ) or 'audit chain'}")
    for url in urls.values():
        get_engine(url).dispose()
    return {
        "subjects": n,
        "payloads_equal": True,
        "rows_compared": {name: len(snapshots["direct"][name]) for name in _ROWS},
        "tables_equal": sorted([*_ROWS, "row_counts", "audit_chain"]),
    }
