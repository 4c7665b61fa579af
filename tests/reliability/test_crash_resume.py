"""Crash and resume (issue 7): a flow killed with SIGKILL mid-run, then run again to the end.

For each job (newsletter sync, push-bookings, forward-student-id-orders, the erasure fan-out
and follow-up) three rounds on one database and one sandbox, each round:

1. new work arrives (intake, as the website would send it);
2. the flow runs in an OS process of its own (``psync run NAME -p ...``, this test's
   database and sandbox, the session's Prefect API), the sandbox answering each call 15 ms
   late so the run is still going when it is killed: SIGKILL once the sandbox has answered
   K calls of the job's processors, K drawn from a seeded RNG per job and round;
3. the world moves on before the next scheduled run: some of the round's new items are
   withdrawn, cancelled or rescheduled (whether the killed run had sent them or not);
4. the flow runs again here, to completion (the erasure follow-up once the killed run's
   claim on its tasks has run out, as the schedule would find it: the clock is moved on
   past the lease, nothing is slept);
5. the processors hold exactly what the events say (``procs.Expected``, never our
   database), none created anything twice (the sandbox's ``creates`` counters), and the
   audit chain verifies.

The bookings job ends with the erasure of everyone who cancelled after a kill: what a
killed run sent them must be in the recipient register, or the fan-out never asks for it.
The last test is the case no resume could mend before the register was written ahead: the
erasure comes between the crash and the next run, and finds the crashed run's receivers
through their "may hold" rows.

No sleeping except the polling of the sandbox and the killed process, with a deadline.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from sqlmodel import func, select

from connectors import nect
from core.settings import get_settings
from flows import bookings, erasure, journal, newsletter, student_id
from models.audit import AuditEntry, verify
from models.db import transaction
from models.erasure import ErasureRequest, RequestStatus
from models.types import BERLIN, utcnow
from psync.demo_data import JPEG_BYTES, PDF_BYTES, PNG_BYTES
from psync.demo_data import insurance_number as synthetic_insurance_number

from reliability.figures import record
from reliability.procs import (
    Expected,
    actual_archives,
    actual_cardholders,
    actual_cards,
    actual_flexperto,
    actual_receivers,
    actual_timify,
    calls_answered,
    compare,
    creates,
    duplicates,
    kill_after_calls,
    output,
    pseudonym,
    sandbox_state,
    start_flow,
    take_in,
)
from support import TEST_KEY, confirm_manual_tasks

pytestmark = pytest.mark.usefixtures("prefect_harness")

SEED = 7
ROUNDS = 3
LATENCY_MS = 15
KEY = TEST_KEY.encode()
DOC_KEY = Fernet.generate_key().decode()


class Crashes:
    """One job's rounds: the log of events, the kills, the checks."""

    def __init__(self, job: str, url: str, folder: Path, processors: tuple[str, ...]):
        self.job, self.url, self.folder, self.processors = job, url, folder, processors
        self.rng = random.Random(f"{SEED}:{job}")
        self.lines: list[str] = []
        self.killed_at: list[int] = []  # calls answered when each kill landed
        self.resumes = 0

    def take_in(self, events: list[dict], base_dir: Path | None = None) -> None:
        lines = [json.dumps(e, ensure_ascii=False) for e in events]
        take_in(lines, base_dir)
        self.lines += lines

    def kill(self, flow: str, params: dict, most_calls: int, label: str) -> int:
        """Run `flow` in its own process and SIGKILL it after K calls, 1 <= K < most_calls."""
        calls = self.rng.randrange(1, most_calls)
        self.control("faults", {"latency_ms": LATENCY_MS})
        try:
            process = start_flow(flow, params, self.folder, label)
            killed, seen = kill_after_calls(process, self.url, self.processors, calls)
        finally:
            self.control("faults", {"latency_ms": 0})
        assert killed, f"{label} ended (exit {process.returncode}) before {calls} calls:\n{output(self.folder, label)}"
        self.killed_at.append(seen)
        return seen

    def some(self, items, held, count: int) -> list:
        """`count` of `items`, half of them among those the processor holds now (the killed
        run sent them; whether it committed that is what the round is about), seeded."""
        items = sorted(items)
        there = [i for i in items if i in held]
        picked = self.rng.sample(there, min(len(there), (count + 1) // 2))
        rest = [i for i in items if i not in picked]
        return picked + self.rng.sample(rest, min(len(rest), count - len(picked)))

    def resume(self, run):
        self.resumes += 1
        return run()

    def control(self, path: str, body: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/_sandbox/{path}", json=body or {}, timeout=30)
        response.raise_for_status()
        return response.json()

    def check(self, mismatches: list[str]) -> None:
        """Exact state, nothing created twice, the audit chain intact; figures recorded."""
        state = sandbox_state(self.url)
        doubles = duplicates(state)
        with transaction() as session:
            audit = verify(session, KEY)
        record("crash: mismatches", len(mismatches))
        record("crash: duplicates", len(doubles))
        assert not doubles, doubles
        assert not mismatches, "\n".join(mismatches[:40])
        assert audit.ok, audit

    def figures(self) -> None:
        record("crash: kills (SIGKILL mid-run)", len(self.killed_at))
        record("crash: resumes (runs to completion after a kill)", self.resumes)
        record(f"crash: {self.job} killed after K calls", ", ".join(map(str, self.killed_at)), "last")


@pytest.fixture
def crash_env(against_sandbox, monkeypatch, tmp_path):
    """Settings in the environment (the killed process reads them there too)."""
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", DOC_KEY)
    get_settings.cache_clear()
    yield against_sandbox, tmp_path
    requests.post(f"{against_sandbox}/_sandbox/faults", json={"latency_ms": 0}, timeout=5)


# events ---------------------------------------------------------------------------------
def subscriber(tag: str, list_name: str = "newsletter", confirm: bool = True, **person: str) -> list[dict]:
    at = utcnow() - timedelta(hours=2)
    email = person.get("email", f"{tag}@example.de")
    signup = {
        "type": "consent.signup",
        "list": list_name,
        "email": email,
        "salutation": "Frau",
        "first_name": person.get("first_name", "Nora"),
        "last_name": person.get("last_name", f"Neu-{tag}"),
        "ip": "192.0.2.10",
        "at": at.isoformat(),
        "source": "https://www.example.de/newsletter",
        "policy_version": "2026-01",
    }
    if list_name == "service_offers":
        signup["insurance_number"] = insurance_number(tag)
    if not confirm:
        return [signup]
    return [
        signup,
        {
            "type": "consent.confirm",
            "list": list_name,
            "email": email,
            "ip": "198.51.100.7",
            "at": (at + timedelta(minutes=3)).isoformat(),
        },
    ]


def withdrawal(tag: str, list_name: str = "newsletter") -> dict:
    return {
        "type": "consent.withdraw",
        "list": list_name,
        "email": f"{tag}@example.de",
        "channel": "portal",
        "at": utcnow().isoformat(),
    }


def insurance_number(tag: str) -> str:
    return synthetic_insurance_number(random.Random(tag))


def start(days: int, hour: int) -> str:
    """A Berlin wall-clock start `days` ahead, on the hour."""
    day = (utcnow() + timedelta(days=days)).astimezone(BERLIN).date()
    return datetime(day.year, day.month, day.day, hour, 0, tzinfo=BERLIN).isoformat()


def booking(ref: str, video: bool, days: int, hour: int, **person: str) -> dict:
    event = {
        "type": "booking.request",
        "booking_id": ref,
        "channel": "video" if video else "branch",
        "start": start(days, hour),
        "duration_minutes": 30,
        "salutation": "Herr",
        "first_name": "Bernd",
        "last_name": f"Bucher-{ref}",
        "phone": f"+49 170 {1000000 + int(uuid.uuid5(uuid.NAMESPACE_DNS, ref)) % 8999999}",
        "email": f"{ref.lower()}@example.de",
        "birth_date": "1980-05-17",
        "at": utcnow().isoformat(),
        **person,
    }
    if not video:
        event["service_point"] = "sp-berlin"
    return event


def order(ref: str, photo: str = "foto.jpg", **person: str) -> dict:
    return {
        "type": "isic.order",
        "order_id": ref,
        "first_name": "Lena",
        "last_name": f"Studi-{ref}",
        "birth_date": "2004-02-29",
        "email": f"{ref.lower()}@example.de",
        "postal_code": "10115",
        "iban": "DE89370400440532013000",
        "institution": "TU Berlin",
        "at": utcnow().isoformat(),
        "documents": {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": photo},
        **person,
    }


# the jobs -------------------------------------------------------------------------------
def test_sync_newsletter_consents_killed_mid_run_then_run_again(crash_env):
    url, folder = crash_env
    crashes = Crashes("sync-newsletter-consents", url, folder, ("cleverreach",))
    # A third of them also take the service offers: their newsletter receivers are removed
    # from the group one by one, the others' from the whole account in batches.
    crashes.take_in(
        [e for i in range(30) for e in subscriber(f"basis.{i}")]
        + [e for i in range(10) for e in subscriber(f"basis.{i}", "service_offers")]
    )
    newsletter.sync_newsletter_consents()
    pushed = [f"basis.{i}" for i in range(30)]
    for r in range(ROUNDS):
        new = [f"r{r}.{i}" for i in range(30)]
        offers = [f"r{r}.so.{i}" for i in range(5)]
        leaving = crashes.rng.sample(pushed, 8)
        crashes.take_in(
            [e for tag in new for e in subscriber(tag)]
            + [e for tag in offers for e in subscriber(tag, "service_offers")]
            + [e for i in range(3) for e in subscriber(f"r{r}.pending.{i}", confirm=False)]
            + [withdrawal(tag) for tag in leaving]
        )
        # At least: a token, the groups, 8 addresses deleted 5 a call; push: 30 + 5 receivers,
        # 5 a call. More when some leave the group only (a deactivation, a DELETE each).
        crashes.kill("sync-newsletter-consents", {"batch_size": 5, "records_per_task": 15}, 11, f"sync-{r}")
        # Before the next run: some of the round's new subscribers withdraw again.
        held = {e.split("@")[0] for e in sandbox_state(url)["cleverreach"]["groups"]["1001"]["receivers"]}
        changed_their_mind = crashes.some(new, held, 6)
        crashes.take_in([withdrawal(tag) for tag in changed_their_mind])
        crashes.resume(newsletter.sync_newsletter_consents)
        pushed = [t for t in pushed + new if t not in leaving + changed_their_mind]
        expected = Expected(crashes.lines).receivers()
        actual = actual_receivers(sandbox_state(url))
        crashes.check(
            compare("group 1001", expected["1001"], actual["1001"])
            + compare("group 1002", expected["1002"], actual["1002"])
        )
    crashes.figures()


def test_push_bookings_killed_mid_run_then_run_again(crash_env):
    url, folder = crash_env
    crashes = Crashes("push-bookings", url, folder, ("timify", "flexperto"))
    cancelled_after_kill: set[str] = set()
    for r in range(ROUNDS):
        refs = [f"K{r}-{i:02d}" for i in range(24)]
        crashes.take_in([booking(ref, video=i % 3 == 0, days=2 + i % 10, hour=8 + i % 9) for i, ref in enumerate(refs)])
        # Per booking a customer and an appointment, per video booking a Flexperto customer.
        crashes.kill("push-bookings", {"records_per_task": 8}, 50, f"push-{r}")
        # Before the next run: some are cancelled (video ones Flexperto holds among them),
        # some moved.
        held = {c["external_id"] for c in sandbox_state(url)["flexperto"]["customers"].values()}
        cancelled = crashes.some(refs, held, 4)
        moved = crashes.rng.sample([ref for ref in refs if ref not in cancelled], 3)
        crashes.take_in(
            [{"type": "booking.cancel", "booking_id": ref, "at": utcnow().isoformat()} for ref in cancelled]
            + [
                {"type": "booking.reschedule", "booking_id": ref, "start": start(20, 15), "at": utcnow().isoformat()}
                for ref in moved
            ]
        )
        cancelled_after_kill |= set(cancelled)
        crashes.resume(bookings.push_bookings)

        expected = Expected(crashes.lines)
        state = sandbox_state(url)
        appointments, customers = actual_timify(state)
        # A booking cancelled before its first push leaves no customer; after it, the customer
        # stays: either may be true of one the killed run had reached or not.
        maybe = {f"{ref.lower()}@example.de" for ref in cancelled_after_kill}
        made = creates(state)
        crashes.check(
            compare("timify appointments", expected.appointments(), appointments)
            + compare("timify customers", expected.customers(), customers, optional=maybe)
            + compare("flexperto customers", expected.flexperto_customers(), actual_flexperto(state))
            # What must be there was created exactly once (`check` finds any created twice).
            + compare(
                "timify appointment creates",
                dict.fromkeys(expected.appointments(), 1),
                {k: v for k, v in made["timify appointments"].items() if k in expected.appointments()},
            )
            + compare(
                "flexperto creates",
                dict.fromkeys(expected.flexperto_customers(), 1),
                {k: v for k, v in made["flexperto customers"].items() if k in expected.flexperto_customers()},
            )
        )

    # Those who cancelled after a kill ask for erasure: whatever a killed run had sent them
    # must be found (the fan-out goes by the recipient register) and go.
    gone = sorted(f"{ref.lower()}@example.de" for ref in cancelled_after_kill)
    for email in gone:
        with transaction() as session:
            erasure.open_erasure_request(session, email=email, channel="letter", reference="Nach Absturz")
    erasure.follow_up_erasures()
    expected = Expected(crashes.lines, erased=gone)
    state = sandbox_state(url)
    appointments, customers = actual_timify(state)
    crashes.check(
        compare("timify appointments", expected.appointments(), appointments)
        + compare("timify customers", expected.customers(), customers)
        + compare("flexperto customers", expected.flexperto_customers(), actual_flexperto(state))
    )
    crashes.figures()


def test_forward_student_id_orders_killed_mid_run_then_run_again(crash_env):
    url, folder = crash_env
    for name, data in (("nachweis.pdf", PDF_BYTES), ("ausweis.png", PNG_BYTES)):
        (folder / name).write_bytes(data)
    crashes = Crashes("forward-student-id-orders", url, folder, ("isic",))
    photos: dict[str, bytes] = {}
    for r in range(ROUNDS):
        refs = [f"ISIC-K{r}-{i:02d}" for i in range(10)]
        for ref in refs:
            photos[ref] = JPEG_BYTES + ref.encode()
            (folder / f"{ref}.jpg").write_bytes(photos[ref])
        crashes.take_in([order(ref, f"{ref}.jpg") for ref in refs], folder)
        # Per order: cardholder, photo, the card list, the card request (and a token).
        crashes.kill("forward-student-id-orders", {"records_per_task": 4}, 40, f"forward-{r}")
        cancelled = crashes.some(refs, set(sandbox_state(url)["isic"]["cardholders"]), 3)
        crashes.take_in([{"type": "isic.cancel", "order_id": ref, "at": utcnow().isoformat()} for ref in cancelled])
        crashes.resume(student_id.forward_student_id_orders)
        crashes.control("isic/complete-deletions")  # the issuer carries out what it accepted
        crashes.control("isic/issue")
        student_id.sync_student_id_order_status()

        expected = Expected(crashes.lines, photos=photos)
        state = sandbox_state(url)
        card_creates = creates(state)["isic cards"]
        crashes.check(
            compare("isic cardholders", expected.cardholders(), actual_cardholders(state))
            + compare("isic cards", expected.cards("ACTIVE"), actual_cards(state))
            + compare("isic deletions pending", {}, dict.fromkeys(state["isic"]["deletions"]["pending"]))
            + compare(
                "isic card creates",
                dict.fromkeys(expected.cardholders(), 1),
                {k: v for k, v in card_creates.items() if k in expected.cardholders()},
            )
        )
    crashes.figures()


NAMES = [("Greta", "Löschmann"), ("Hannes", "Vergessen"), ("Ida", "Austrag"), ("Jost", "Tilger")]
PEOPLE = [(f"weg.{i}@example.de", first, last) for i, (first, last) in enumerate(NAMES)]


def test_erasure_fan_out_and_follow_up_killed_mid_run_then_run_again(crash_env, monkeypatch):
    url, folder = crash_env
    for name, data in (("nachweis.pdf", PDF_BYTES), ("ausweis.png", PNG_BYTES), ("foto.jpg", JPEG_BYTES)):
        (folder / name).write_bytes(data)
    crashes = Crashes("erasure", url, folder, ("cleverreach", "timify", "flexperto", "isic", "nect"))
    _known_everywhere(crashes, folder)
    erased: list[str] = []
    # The next follow-up comes after the killed run's claim on its tasks has run out.
    later = timedelta(minutes=get_settings().erasure_claim_minutes + 1)
    # Round by round: a fan-out killed, a follow-up over two requests killed, a fan-out killed.
    for r, (flow, people) in enumerate(
        [("fan-out-erasure", [0]), ("follow-up-erasures", [1, 2]), ("fan-out-erasure", [3])]
    ):
        ids = []
        for person in people:
            with transaction() as session:
                ids.append(
                    erasure.open_erasure_request(
                        session, email=PEOPLE[person][0], channel="letter", reference=f"Runde {r}"
                    ).id
                )
        params = {"request_id": str(ids[0])} if flow == "fan-out-erasure" else {}
        # Per person: CleverReach 2, TIMIFY 4, Flexperto 6, the issuer 4, Nect 2 (and tokens).
        crashes.kill(flow, params, 18 * len(people), f"erasure-{r}")
        with monkeypatch.context() as clock:
            clock.setattr("flows.erasure.utcnow", lambda: utcnow() + later)
            for _ in range(2):  # the issuer's and Nect's deletions finish between two runs
                crashes.control("isic/complete-deletions")
                crashes.control("nect/complete-deletions")
                crashes.resume(erasure.follow_up_erasures)
                confirm_manual_tasks(ids)  # USU (no API), as the officer confirms it
                if _completed(ids):
                    break
        assert _completed(ids), f"round {r}: requests still open after two follow-ups"
        erased += [PEOPLE[p][0] for p in people]
        crashes.check(_everywhere_but(crashes, url, erased))
    crashes.figures()


def _completed(ids) -> bool:
    with transaction() as session:
        return all(session.get(ErasureRequest, rid).status == RequestStatus.completed for rid in ids)


def _known_everywhere(crashes: Crashes, folder: Path) -> None:
    """Each person subscribed, booked a video consultation (held), got a student ID and was
    identified at Nect: through the real intake and flows, without crashes."""
    events = []
    for i, (email, first, last) in enumerate(PEOPLE):
        person = {"email": email, "first_name": first, "last_name": last}
        events += subscriber(email.split("@")[0], **person)
        # 60 days ahead: its chat (held below) is not due for the day-90 purge.
        events.append(booking(f"WEG-V{i}", video=True, days=60, hour=10 + i, **person))
        events.append(order(f"WEG-I{i}", **person))
    crashes.take_in(events, folder)
    newsletter.sync_newsletter_consents()
    bookings.push_bookings()
    student_id.forward_student_id_orders()
    crashes.control("isic/issue")
    student_id.sync_student_id_order_status()
    for customer_id in sandbox_state(crashes.url)["flexperto"]["customers"]:
        crashes.control("flexperto/chats", {"customer_id": customer_id, "at": utcnow().isoformat()})
    # The portal identifies each at Nect (only the pseudonym goes there) and hands the case over.
    client = nect.from_settings(get_settings())
    crashes.take_in(
        [
            {
                "type": "ident.case",
                "email": email,
                "case_id": client.open_case(pseudonym(KEY, email)),
                "at": utcnow().isoformat(),
            }
            for email, _, _ in PEOPLE
        ]
    )


def _everywhere_but(crashes: Crashes, url: str, erased: list[str]) -> list[str]:
    expected = Expected(crashes.lines, photos={f"WEG-I{i}": JPEG_BYTES for i in range(len(PEOPLE))}, erased=erased)
    state = sandbox_state(url)
    appointments, customers = actual_timify(state)
    kept = [p[0] for p in PEOPLE if p[0] not in erased]
    cases = {c["reference"] for c in state["nect"]["cases"].values()}
    return (
        compare("cleverreach group 1001", expected.receivers()["1001"], actual_receivers(state)["1001"])
        + compare("timify appointments", expected.appointments(), appointments)
        + compare("timify customers", expected.customers(), customers)
        + compare("flexperto customers", expected.flexperto_customers(), actual_flexperto(state))
        + compare(
            "flexperto archives",
            {ref: ["chat", "recording"] for ref in expected.flexperto_customers()},
            actual_archives(state),
        )
        + compare("isic cardholders", expected.cardholders(), actual_cardholders(state))
        + compare("isic cards", expected.cards("ACTIVE"), actual_cards(state))
        + compare("nect cases", {pseudonym(KEY, e): True for e in kept}, dict.fromkeys(cases, True))
    )


def test_an_erasure_between_a_crash_and_the_next_run_reaches_what_the_crashed_run_sent(crash_env, monkeypatch):
    url, folder = crash_env
    crashes = Crashes("erasure after a crash", url, folder, ("cleverreach",))
    crashes.take_in(subscriber("absturz.eins") + subscriber("absturz.zwei"))
    with monkeypatch.context() as dying:
        # The process dies after CleverReach took the batch, before the commit (as SIGKILL
        # would: the transaction rolls back, the register never hears of it).
        dying.setattr("flows.newsletter._record_sent", _die)
        with pytest.raises(RuntimeError, match="died"):
            newsletter.sync_newsletter_consents()
    with transaction() as session:
        request_id = erasure.open_erasure_request(
            session, email="absturz.eins@example.de", channel="letter", reference="Nach Absturz"
        ).id
    erasure.fan_out_erasure(request_id=request_id)
    newsletter.sync_newsletter_consents()  # the next scheduled run
    expected = Expected(crashes.lines, erased=["absturz.eins@example.de"]).receivers()
    # Asserted here, not through `check`: a known gap is not among the figures' mismatches.
    assert not compare("group 1001", expected["1001"], actual_receivers(sandbox_state(url))["1001"])


def _die(*args, **kwargs):
    raise RuntimeError("process died")


# every call index -----------------------------------------------------------------------
EVERY_INDEX = {
    # job: (processors whose calls count, its parameters, a round's events by round tag)
    "sync-newsletter-consents": (
        ("cleverreach",),
        {"batch_size": 1},
        lambda tag: [e for person in ("a", "b", "c") for e in subscriber(f"{tag}.{person}")],
    ),
    "push-bookings": (
        ("timify", "flexperto"),
        {},
        lambda tag: [
            booking(f"{tag}-V", video=True, days=3, hour=10),
            booking(f"{tag}-B", video=False, days=4, hour=11),
        ],
    ),
    "forward-student-id-orders": (("isic",), {}, lambda tag: [order(f"{tag}-O")]),
}


def _markers(events: list[dict]) -> set[str]:
    """Each person's e-mail address and family name, as the processors would hold them."""
    return {value for e in events for value in (e.get("email", "").lower(), e.get("last_name")) if value}


@pytest.mark.parametrize("job", sorted(EVERY_INDEX))
def test_a_kill_at_every_call_index_then_an_erasure_of_everyone_leaves_nothing_anywhere(crash_env, job):
    """Whatever call the process dies after, the register knew before the data left (written
    ahead), so erasing everyone of that round leaves nothing of them at any processor."""
    url, folder = crash_env
    for name, data in (("nachweis.pdf", PDF_BYTES), ("ausweis.png", PNG_BYTES), ("foto.jpg", JPEG_BYTES)):
        (folder / name).write_bytes(data)
    processors, params, events_of = EVERY_INDEX[job]
    crashes = Crashes(f"{job} every index", url, folder, processors)
    tag = job.split("-")[0][:4]

    # A whole run of one round, to count its calls.
    crashes.take_in(events_of(f"{tag}0"), folder)
    before = calls_answered(sandbox_state(url), processors)
    with transaction() as session:
        audited_before = session.exec(select(func.max(AuditEntry.id))).one() or 0
    crashes.resume(lambda: start_flow(job, params, folder, f"{tag}-full").wait())
    total = calls_answered(sandbox_state(url), processors) - before
    assert total >= 3, f"{job}: a round makes {total} calls"
    rounds = [events_of(f"{tag}0")]
    for k in range(1, total):
        events = events_of(f"{tag}{k}")
        crashes.take_in(events, folder)
        crashes.control("faults", {"latency_ms": LATENCY_MS})
        try:
            process = start_flow(job, params, folder, f"{tag}-kill-{k}")
            killed, seen = kill_after_calls(process, url, processors, k)
        finally:
            crashes.control("faults", {"latency_ms": 0})
        assert killed, f"{job} ended before {k} calls:\n{output(folder, f'{tag}-kill-{k}')}"
        crashes.killed_at.append(seen)
        rounds.append(events)
        # Everyone of this round asks for erasure before any other run (a student-ID order
        # is cancelled first: while it is in progress the erasure would only restrict it).
        crashes.take_in(
            [
                {"type": "isic.cancel", "order_id": e["order_id"], "at": utcnow().isoformat()}
                for e in events
                if e["type"] == "isic.order"
            ],
            folder,
        )
        for email in sorted({e["email"].lower() for e in events}):
            with transaction() as session:
                request_id = erasure.open_erasure_request(session, email=email, channel="letter").id
            try:
                erasure.fan_out_erasure(request_id=request_id)
            except RuntimeError:  # a deletion the issuer accepted is read back later
                pass
    crashes.control("isic/complete-deletions")
    confirm_manual_tasks()  # USU (no API), as the officer confirms it
    erasure.follow_up_erasures()  # also settles the call journals the killed runs left
    state = sandbox_state(url)
    # Every call a processor answered is in the audit trail, the killed runs' too (from
    # their call journals: flows/journal.py), each once: no call is made twice here.
    answered = calls_answered(state, processors) - before
    with transaction() as session:
        rows = session.exec(select(AuditEntry).where(AuditEntry.id > audited_before)).all()
    calls = [r for r in rows if r.action.startswith("call.") and r.processor in processors]
    audited = sum(r.attempts or 0 for r in calls)
    recovered = sum(1 for r in calls if r.detail.startswith("recovered="))
    ended = [
        r
        for r in rows
        if r.action.startswith(job) and r.action.endswith(".batch") and r.outcome == "ended_before_commit"
    ]
    record(
        f"crash: {job} calls answered / audited / recovered from journals",
        f"{answered} / {audited} / {recovered}",
        "last",
    )
    # A kill after the last call may land after the commit: then that run ended normally.
    assert journal.pending() == [] and 1 <= len(ended) <= total - 1, (journal.pending(), len(ended))
    assert audited >= answered > 0 and recovered > 0, (answered, audited, recovered)
    text = json.dumps({k: v for k, v in state.items() if k in ("cleverreach", "timify", "flexperto", "isic")})
    left = sorted(m for events in rounds[1:] for m in _markers(events) if m in text)
    record(f"crash: {job} killed at every call index", total - 1)
    assert not left, f"{job}: still at a processor after a kill and an erasure: {left}"
    with transaction() as session:
        statuses = {r.status for r in session.exec(select(ErasureRequest))}
    assert statuses == {RequestStatus.completed}
