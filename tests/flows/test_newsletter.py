"""The newsletter flows end to end: local database, Prefect, the sandbox over loopback."""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections import Counter
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlmodel import col, func, select

from flows import newsletter
from flows.intake import intake_lines
from models.audit import AuditEntry, verify
from models.consent import ConsentEvent, ConsentRecord, ConsentState
from models.db import get_engine, transaction
from models.recipients import Recipient
from models.restriction import RestrictionHold
from models.subjects import DataSubject
from models.types import utcnow

from support import TEST_KEY, receivers_sent, sandbox_state

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = TEST_KEY.encode()
NOW = utcnow()


def signup(email, list_name="newsletter", at=None, kvnr=None):
    event = {
        "type": "consent.signup",
        "list": list_name,
        "email": email,
        "salutation": "Frau",
        "first_name": "Erika",
        "last_name": "Muster",
        "ip": "192.0.2.10",
        "at": (at or NOW - timedelta(hours=2)).isoformat(),
        "source": "https://example.de/nl",
        "policy_version": "2026-01",
    }
    if kvnr:
        event["insurance_number"] = kvnr
    return json.dumps(event)


def confirm(email, list_name="newsletter", at=None):
    at = at or NOW - timedelta(hours=1)
    return json.dumps(
        {"type": "consent.confirm", "list": list_name, "email": email, "ip": "198.51.100.7", "at": at.isoformat()}
    )


def withdraw(email, list_name="newsletter"):
    return json.dumps(
        {"type": "consent.withdraw", "list": list_name, "email": email, "channel": "portal", "at": NOW.isoformat()}
    )


def take_in(*lines):
    with transaction() as session:
        results = intake_lines(session, KEY, lines, now=NOW)
    assert {r.outcome for r in results} <= {"stored", "unchanged", "duplicate"}, results


def receivers(url, group):
    return sandbox_state(url)["cleverreach"]["groups"][group]["receivers"]


def calls(url, route):
    return sandbox_state(url)["cleverreach"]["calls"].get(route, 0)


UPSERT = "POST /v3/groups/{gid}/receivers/upsertplus"


def test_only_confirmed_sign_ups_reach_their_group_with_proof(against_sandbox):
    take_in(
        signup("a@example.de"),
        confirm("a@example.de"),
        signup("pending@example.de"),
        signup("b@example.de", "service_offers", kvnr="A123456780"),
        confirm("b@example.de", "service_offers"),
    )
    counts = newsletter.sync_newsletter_consents()
    assert counts["pushed"] == 2 and counts["not_pushed_pending"] == 1
    news, offers = receivers(against_sandbox, "1001"), receivers(against_sandbox, "1002")
    assert list(news) == ["a@example.de"] and list(offers) == ["b@example.de"]
    a = news["a@example.de"]
    assert a["active"] is True
    assert a["registered"] == int((NOW - timedelta(hours=2)).timestamp())
    assert a["activated"] == int((NOW - timedelta(hours=1)).timestamp())
    assert a["source"] == "https://example.de/nl"
    assert a["attributes"] == {"signup_ip": "192.0.2.10", "confirm_ip": "198.51.100.7", "policy_version": "2026-01"}
    assert a["global_attributes"]["firstname"] == "Erika"
    assert offers["b@example.de"]["attributes"]["insurance_number"] == "A123456780"


def test_the_newsletter_group_never_carries_an_insurance_number(against_sandbox):
    # One person on both lists: the service-offers sign-up has the number, the newsletter not.
    take_in(
        signup("c@example.de", "service_offers", kvnr="A123456780"),
        confirm("c@example.de", "service_offers"),
        signup("c@example.de"),
        confirm("c@example.de"),
    )
    newsletter.sync_newsletter_consents()
    news = receivers(against_sandbox, "1001")
    assert "A123456780" not in json.dumps(news)
    assert "A123456780" in json.dumps(receivers(against_sandbox, "1002"))


DELETE_ONE = "DELETE /v3/groups/{gid}/receivers/{email_or_id}"
DELETE_BULK = "POST /v3/receivers/delete"


def add_foreign_group(name="Hand-made group"):
    """A group this sync does not manage, created at the sandbox the way a marketer would."""
    from connectors import cleverreach
    from connectors.transport import path
    from core.settings import get_settings

    client = cleverreach.from_settings(get_settings())
    client.http.request("groups.create", "POST", path("groups.json"), json={"name": name})


def test_local_withdrawal_stops_mailing_and_removes_the_receiver(against_sandbox):
    take_in(signup("w@example.de"), confirm("w@example.de"), signup("s@example.de"), confirm("s@example.de"))
    newsletter.sync_newsletter_consents()
    take_in(withdraw("w@example.de"))
    counts = newsletter.sync_newsletter_consents()
    assert counts["removed"] == 1
    assert list(receivers(against_sandbox, "1001")) == ["s@example.de"]
    # CleverReach holds the address for nothing else: removed from the account in bulk.
    assert (calls(against_sandbox, DELETE_BULK), calls(against_sandbox, DELETE_ONE)) == (1, 0)
    with transaction() as session:
        row = session.exec(
            select(Recipient)
            .where(Recipient.processor == "cleverreach")
            .join(DataSubject)
            .where(DataSubject.email == "w@example.de")
        ).one()
        assert row.removed_at is not None
        removal = session.exec(select(AuditEntry).where(AuditEntry.action == "newsletter.remove")).one()
        assert removal.detail == "newsletter, account-wide"


def test_a_removal_asks_for_the_groups_once_and_audits_the_call(against_sandbox):
    # The account-wide check asks CleverReach for its groups once per batch with a lapsed
    # consent (none without one), and the call is audited like any other.
    take_in(signup("g@example.de"), confirm("g@example.de"))
    newsletter.sync_newsletter_consents()
    with transaction() as session:
        before = len(session.exec(select(AuditEntry).where(AuditEntry.action == "call.groups.list")).all())
    assert before == 0  # nothing lapsed: no need to ask
    take_in(withdraw("g@example.de"))
    assert newsletter.sync_newsletter_consents()["removed"] == 1
    with transaction() as session:
        asked = session.exec(select(AuditEntry).where(AuditEntry.action == "call.groups.list")).all()
    assert len(asked) == 1 and asked[0].outcome == "ok"


def test_a_withdrawal_that_never_reached_cleverreach_needs_no_groups(against_sandbox, monkeypatch):
    # The withdrawn person never reached CleverReach (confirmed and withdrawn before any
    # sync): no account-wide delete, so the groups are never asked for, and the confirmed
    # one is pushed and counted whatever the groups call would have answered.
    take_in(signup("k@example.de"), confirm("k@example.de"), signup("n@example.de"), confirm("n@example.de"))
    take_in(withdraw("n@example.de"))
    asked = []

    def unavailable(self):
        asked.append(self)
        raise RuntimeError("groups unavailable")

    monkeypatch.setattr(newsletter.cleverreach.CleverReach, "groups", unavailable)
    counts = newsletter.sync_newsletter_consents()
    assert asked == []
    assert counts["pushed"] == 1 and list(receivers(against_sandbox, "1001")) == ["k@example.de"]


def test_withdrawals_leave_the_account_in_batches(against_sandbox):
    emails = [f"b{i}@example.de" for i in range(7)]
    take_in(*[line for e in emails for line in (signup(e), confirm(e))])
    newsletter.sync_newsletter_consents(batch_size=3)
    take_in(*map(withdraw, emails))
    assert newsletter.sync_newsletter_consents(batch_size=3)["removed"] == 7
    assert receivers(against_sandbox, "1001") == {}
    assert (calls(against_sandbox, DELETE_BULK), calls(against_sandbox, DELETE_ONE)) == (3, 0)


def test_a_receiver_kept_for_another_list_is_removed_from_this_group_only(against_sandbox):
    take_in(
        signup("both@example.de"),
        confirm("both@example.de"),
        signup("both@example.de", "service_offers", kvnr="A123456780"),
        confirm("both@example.de", "service_offers"),
    )
    newsletter.sync_newsletter_consents()
    take_in(withdraw("both@example.de"))
    assert newsletter.sync_newsletter_consents()["removed"] == 1
    assert receivers(against_sandbox, "1001") == {}
    assert list(receivers(against_sandbox, "1002")) == ["both@example.de"]
    assert (calls(against_sandbox, DELETE_BULK), calls(against_sandbox, DELETE_ONE)) == (0, 1)


def test_an_account_with_a_group_we_do_not_manage_gets_one_delete_per_receiver(against_sandbox):
    take_in(signup("f@example.de"), confirm("f@example.de"))
    newsletter.sync_newsletter_consents()
    add_foreign_group()
    take_in(withdraw("f@example.de"))
    assert newsletter.sync_newsletter_consents()["removed"] == 1
    assert receivers(against_sandbox, "1001") == {}
    assert (calls(against_sandbox, DELETE_BULK), calls(against_sandbox, DELETE_ONE)) == (0, 1)


def test_unsubscribe_link_comes_back_as_a_local_withdrawal(against_sandbox):
    take_in(signup("u@example.de"), confirm("u@example.de"))
    newsletter.sync_newsletter_consents()
    requests.post(f"{against_sandbox}/_sandbox/cleverreach/unsubscribe", json={"email": "u@example.de"}, timeout=10)
    assert newsletter.pull_newsletter_unsubscribes()["withdrawn"] == 1
    assert newsletter.pull_newsletter_unsubscribes().get("withdrawn", 0) == 0  # idempotent
    with transaction() as session:
        record = session.exec(select(ConsentRecord)).one()
        assert record.state == ConsentState.withdrawn
        assert record.withdraw_channel == "newsletter-link"
    newsletter.sync_newsletter_consents()
    assert receivers(against_sandbox, "1001") == {}


def test_a_second_sync_sends_nothing(against_sandbox):
    take_in(signup("i@example.de"), confirm("i@example.de"))
    newsletter.sync_newsletter_consents()
    before = calls(against_sandbox, UPSERT)
    assert newsletter.sync_newsletter_consents() == {}
    assert calls(against_sandbox, UPSERT) == before == 1


@pytest.mark.parametrize(
    ("list_name", "due"),
    [
        # 11:00 Berlin summer time + 30 calendar days = 11:00 winter time (DST ends 25 Oct).
        ("newsletter", datetime(2026, 10, 31, 10, 0, tzinfo=UTC)),
        ("service_offers", datetime(2026, 10, 22, 9, 0, tzinfo=UTC)),
    ],
)
def test_unconfirmed_sign_ups_expire_after_their_period(settings, list_name, due):
    signed = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
    kvnr = "A123456780" if list_name == "service_offers" else None
    with transaction() as session:
        intake_lines(session, KEY, [signup("e@example.de", list_name, at=signed, kvnr=kvnr)], now=signed)
    assert newsletter.expire_unconfirmed_optins(as_of=due - timedelta(seconds=1)) == {}
    counts = newsletter.expire_unconfirmed_optins(as_of=due)
    assert counts == {"expired": 1, "subjects_erased": 1}
    with transaction() as session:
        subject = session.exec(select(DataSubject)).one()
        record = session.exec(select(ConsentRecord)).one()
        assert (subject.email, subject.first_name, subject.insurance_number) == (None, None, None)
        assert record.state == ConsentState.expired and record.signup_ip is None
        audit = session.exec(select(AuditEntry).where(AuditEntry.action == "consent.expire")).one()
        assert audit.subject_pseudonym == subject.pseudonym


def test_an_expiry_keeps_the_corrected_address_so_its_old_lines_restore_nothing(settings):
    # Signed up as e@, corrected to e.neu@ (Art. 16), never confirmed: the expiry erases the
    # subject. Their sign-up under e.neu@ dated before the expiry, arriving later, is a receipt
    # only; before, it made a new subject of the erased data (e.neu@ is not the pseudonym's).
    signed = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
    with transaction() as session:
        intake_lines(session, KEY, [signup("e@example.de", at=signed)], now=signed)
        session.exec(select(DataSubject)).one().email = "e.neu@example.de"
    due = datetime(2026, 10, 31, 10, 0, tzinfo=UTC)
    assert newsletter.expire_unconfirmed_optins(as_of=due) == {"expired": 1, "subjects_erased": 1}
    with transaction() as session:
        late = intake_lines(
            session, KEY, [signup("e.neu@example.de", "service_offers", at=signed, kvnr="A123456780")], now=due
        )
    assert [r.outcome for r in late] == ["unchanged"]
    with transaction() as session:
        assert session.exec(select(DataSubject.email)).all() == [None]


def test_a_confirmation_still_awaiting_its_signup_expires_like_an_unconfirmed_signup(settings):
    # Seed 000: what a double opt-in never completed is deleted after the list's period; a
    # confirmation whose sign-up never came is kept no longer, counted from the click.
    clicked = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
    with transaction() as session:
        kept = intake_lines(session, KEY, [confirm("w@example.de", at=clicked)], now=clicked)
    assert [r.outcome for r in kept] == ["pending"]
    due = datetime(2026, 10, 31, 10, 0, tzinfo=UTC)  # 30 Berlin calendar days, across DST
    assert newsletter.expire_unconfirmed_optins(as_of=due - timedelta(seconds=1)) == {}
    assert newsletter.expire_unconfirmed_optins(as_of=due) == {"expired": 1, "subjects_erased": 1}
    with transaction() as session:
        record = session.exec(select(ConsentRecord)).one()
        assert record.state == ConsentState.expired
        assert [e.ip for e in session.exec(select(ConsentEvent))] == [None, None]  # the click, the expiry
        # The sign-up it belonged to, arriving now, is older than the erasure: a receipt only.
        late = intake_lines(session, KEY, [signup("w@example.de", at=clicked - timedelta(hours=1))], now=due)
    assert [r.outcome for r in late] == ["unchanged"]
    with transaction() as session:
        assert session.exec(select(DataSubject.email)).all() == [None]
        assert session.exec(select(ConsentRecord.state)).all() == [ConsentState.expired]


def test_a_known_persons_confirmation_may_wait_again_after_one_expired(settings):
    # Erika is subscribed to the newsletter; her clicks for the service offers (21 days) come
    # without their sign-up. Each wait expires on its own (a record's expiry is keyed by
    # when its wait began), and she stays known: her newsletter consent needs her.
    first = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)

    def take(line: str, now: datetime) -> list[str]:
        with transaction() as session:
            return [(r.outcome, r.reason) for r in intake_lines(session, KEY, [line], now=now)]

    take_in(
        signup("e@example.de", at=first - timedelta(days=1)), confirm("e@example.de", at=first - timedelta(hours=1))
    )
    assert take(confirm("e@example.de", "service_offers", at=first), first)[0][0] == "pending"
    expiry = datetime(2026, 10, 22, 9, 0, tzinfo=UTC)
    assert newsletter.expire_unconfirmed_optins(as_of=expiry) == {"expired": 1, "subjects_erased": 0}
    assert take(confirm("e@example.de", "service_offers", at=first + timedelta(days=1)), expiry) == [
        ("unchanged", "no sign-up for this list; the confirmations waiting for one expired at 2026-10-22T09:00:00Z")
    ]
    again = expiry + timedelta(days=2)
    assert take(confirm("e@example.de", "service_offers", at=again), again)[0][0] == "pending"
    due = datetime(2026, 11, 14, 10, 0, tzinfo=UTC)  # 21 Berlin calendar days after 11:00 summer time
    assert newsletter.expire_unconfirmed_optins(as_of=due - timedelta(seconds=1)) == {}
    assert newsletter.expire_unconfirmed_optins(as_of=due) == {"expired": 1, "subjects_erased": 0}
    with transaction() as session:
        states = dict(session.exec(select(ConsentRecord.list_name, ConsentRecord.state)).all())
        assert states == {"newsletter": ConsentState.confirmed, "service_offers": ConsentState.expired}
        assert session.exec(select(DataSubject.email)).one() == "e@example.de"
        ips = session.exec(
            select(ConsentEvent.ip).join(ConsentRecord).where(ConsentRecord.list_name == "service_offers")
        ).all()
        assert len(ips) == 5 and set(ips) == {None}  # three clicks, two expiries


def test_a_crash_after_the_upsert_then_a_rerun_ends_exactly_right(against_sandbox, monkeypatch):
    take_in(*[line for i in range(30) for line in (signup(f"k{i}@example.de"), confirm(f"k{i}@example.de"))])
    original = newsletter.record_confirmed_many
    batches = []

    def crash_on_second_batch(*args, **kwargs):
        batches.append(1)
        if len(batches) == 2:
            raise RuntimeError("simulated crash between the call and the commit")
        return original(*args, **kwargs)

    monkeypatch.setattr(newsletter, "record_confirmed_many", crash_on_second_batch)
    with pytest.raises(RuntimeError):
        newsletter.sync_newsletter_consents(batch_size=10, records_per_task=10)
    assert len(receivers(against_sandbox, "1001")) == 20  # batch 2 reached CleverReach...
    with transaction() as session:  # ...its commit did not happen here, but its write-ahead did
        rows = session.exec(select(Recipient).where(Recipient.processor == "cleverreach")).all()
        assert len(rows) == 20 and sum(r.confirmed_at is not None for r in rows) == 10
        assert all(r.removed_at is None for r in rows)  # "may hold" is live: an erasure asks there
    monkeypatch.setattr(newsletter, "record_confirmed_many", original)
    counts = newsletter.sync_newsletter_consents(batch_size=10, records_per_task=10)
    assert counts["pushed"] == 20
    held = receivers(against_sandbox, "1001")
    assert sorted(held) == sorted(f"k{i}@example.de" for i in range(30))
    assert all(r["active"] for r in held.values())
    with transaction() as session:
        rows = session.exec(select(Recipient).where(Recipient.processor == "cleverreach")).all()
        assert len(rows) == 30 and len({r.subject_id for r in rows}) == 30
        assert all(r.confirmed_at is not None for r in rows)


def test_each_batch_writes_the_next_one_ahead_and_every_upsert_finds_its_receivers_registered(
    against_sandbox, monkeypatch
):
    emails = [f"w{i}@example.de" for i in range(45)]
    take_in(*[line for e in emails for line in (signup(e), confirm(e))])
    original, unregistered, sent = newsletter._upsert, [], []

    def checked(client, group, list_name, rows):
        # On the worker thread, through a reader of its own: only committed rows count. (On
        # SQLite a plain sqlite3 reader: the project's connections begin IMMEDIATE, as writers.)
        query = "SELECT subject_id FROM recipient WHERE processor = 'cleverreach' AND removed_at IS NULL"
        engine = get_engine()
        if engine.dialect.name == "sqlite":
            with closing(sqlite3.connect(engine.url.database)) as db:
                live = {uuid.UUID(hex=row[0]) for row in db.execute(query)}
        else:
            with engine.connect() as db:
                live = {uuid.UUID(str(row[0])) for row in db.exec_driver_sql(query)}
        unregistered.extend(r.subject_id for r in rows if r.subject_id not in live)
        sent.extend(rows)
        return original(client, group, list_name, rows)

    monkeypatch.setattr(newsletter, "_upsert", checked)
    counts = newsletter.sync_newsletter_consents(batch_size=5, records_per_task=10)
    assert counts["pushed"] == 45 and len(sent) == 45
    assert unregistered == []
    with transaction() as session:
        ahead = session.exec(select(AuditEntry.detail).where(AuditEntry.action.endswith(".register_ahead"))).all()
    # Batches of 10, 10, 10, 10 and 5: the first writes itself ahead, each of the next four
    # (the short last one too) was written by the batch before it (while its upserts were on
    # the wire) and writes nothing again.
    assert len(ahead) == 5 and sum("batch=next" in detail for detail in ahead) == 4
    assert "records=5" in ahead[-1]
    # A different batch size does not trust the marks: 10 more go through their own step 1.
    more = [f"v{i}@example.de" for i in range(10)]
    take_in(*[line for e in more for line in (signup(e), confirm(e))])
    assert newsletter.sync_newsletter_consents(batch_size=5, records_per_task=7)["pushed"] == 10
    assert unregistered == []
    assert sorted(receivers(against_sandbox, "1001")) == sorted(emails + more)


def test_the_next_batch_is_written_ahead_in_the_database_for_the_confirmed_and_their_co_recipients(
    against_sandbox, monkeypatch
):
    # Batches of 10: each writes the next one ahead by an INSERT … SELECT of the confirmed
    # consents among its changes (no record read). Pending sign-ups are among them, and
    # must get no row; USU (which works on the newsletter at CleverReach) gets one per row.
    confirmed = [f"c{i}@example.de" for i in range(24)]
    pending = [f"p{i}@example.de" for i in range(6)]
    take_in(*[line for e in confirmed for line in (signup(e), confirm(e))], *[signup(e) for e in pending])
    read = []
    monkeypatch.setattr(newsletter.ConsentJob, "select_ahead", lambda *args: read.append(args) or [])
    counts = newsletter.sync_newsletter_consents(lists=["newsletter"], batch_size=5, records_per_task=10)
    assert counts["pushed"] == 24 and counts["not_pushed_pending"] == 6
    assert read == []  # nobody was left out, so no batch read its records to write them ahead
    with transaction() as session:
        by_email = {s.id: s.email for s in session.exec(select(DataSubject))}
        rows = session.exec(select(Recipient)).all()
    at = {(by_email[r.subject_id], r.processor) for r in rows}
    assert at == {(e, p) for e in confirmed for p in ("cleverreach", "usu")}
    assert all((r.confirmed_at is not None) == (r.processor == "cleverreach") for r in rows)


def test_a_crash_between_waves_rolls_the_whole_batch_back_and_a_rerun_ends_exact(against_sandbox, monkeypatch):
    # Five calls of 6 receivers, recorded in waves of two calls; the second wave's record
    # fails. The batch's transaction holds all waves, so nothing of it may stay behind.
    take_in(*[line for i in range(30) for line in (signup(f"v{i}@example.de"), confirm(f"v{i}@example.de"))])
    monkeypatch.setattr(newsletter, "_WAVE", 12)
    original = newsletter.record_confirmed_many
    waves = []

    def crash_on_second_wave(*args, **kwargs):
        waves.append(len(args[3]))
        if len(waves) == 2:
            raise RuntimeError("simulated crash between two waves")
        return original(*args, **kwargs)

    monkeypatch.setattr(newsletter, "record_confirmed_many", crash_on_second_wave)
    with pytest.raises(RuntimeError):
        newsletter.sync_newsletter_consents(lists=["newsletter"], batch_size=6, records_per_task=30)
    assert waves == [12, 12]
    with transaction() as session:
        # The batch's confirmations rolled back; what was written ahead of its calls stayed.
        rows = session.exec(select(Recipient).where(Recipient.processor == "cleverreach")).all()
        assert len(rows) == 30 and all(r.confirmed_at is None and r.removed_at is None for r in rows)
        assert (
            session.exec(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "newsletter.push")
            ).one()
            == 0
        )
    monkeypatch.setattr(newsletter, "record_confirmed_many", original)
    assert newsletter.sync_newsletter_consents(lists=["newsletter"], batch_size=6, records_per_task=30) == {
        "pushed": 30
    }
    held = receivers(against_sandbox, "1001")
    with transaction() as session:
        rows = session.exec(select(Recipient).where(Recipient.processor == "cleverreach")).all()
        assert len(rows) == len(held) == 30
        assert all(r.confirmed_at is not None for r in rows)  # "holds" now
        sent = session.exec(select(AuditEntry).where(AuditEntry.action == "newsletter.push")).all()
        # One "sent" per upsert call (30 receivers, 6 a call), naming no one: the register
        # holds each subject.
        assert len(sent) == 5 and {e.subject_pseudonym for e in sent} == {None}
        assert receivers_sent(e.detail for e in sent) == 30
        assert verify(session, KEY).ok


@pytest.mark.parametrize("bulk", [True, False], ids=["account-wide", "per-group"])
def test_a_failed_delete_keeps_the_register_row_live_for_the_next_run(against_sandbox, monkeypatch, bulk):
    from connectors.cleverreach import CleverReach
    from connectors.transport import FatalError, RetriableError
    from flows.common import JobFailed

    take_in(*[line for e in ("d1@example.de", "d2@example.de") for line in (signup(e), confirm(e))])
    newsletter.sync_newsletter_consents(lists=["newsletter"])
    held = receivers(against_sandbox, "1001")
    if not bulk:
        add_foreign_group()
    take_in(withdraw("d1@example.de"), withdraw("d2@example.de"))
    name = "bulk_delete" if bulk else "delete"
    original = getattr(CleverReach, name)

    def refuse_d2(self, *args):
        if {"d2@example.de", held["d2@example.de"]["id"]} & set(args[-1] if bulk else args[-1:]):
            raise FatalError("cleverreach", f"receivers.{name}", 400)  # refused for this receiver
        return original(self, *args)

    monkeypatch.setattr(CleverReach, name, refuse_d2)
    # One receiver per call, so one call can fail alone.
    counts = newsletter.sync_newsletter_consents(lists=["newsletter"], batch_size=1)
    assert (counts["removed"], counts["remove_failed"]) == (1, 1)
    assert list(receivers(against_sandbox, "1001")) == ["d2@example.de"]  # deactivated, not gone
    assert receivers(against_sandbox, "1001")["d2@example.de"]["active"] is False

    # The removal pass takes what is left; a delete that may work later fails the run,
    # naming the register row, and is tried again by the next run.
    def unavailable(self, *args):
        raise RetriableError("cleverreach", f"receivers.{name}", 503, 5)

    monkeypatch.setattr(CleverReach, name, unavailable)
    with transaction() as session:
        left = str(
            session.exec(
                select(Recipient.id).where(Recipient.removed_at.is_(None), Recipient.processor == "cleverreach")
            ).one()
        )
    with pytest.raises(
        JobFailed, match=rf"removal: 0 record\(s\) parked, 1 to retry .*{left}: cleverreach receivers.{name}: HTTP 503"
    ):
        newsletter.sync_newsletter_consents(lists=["newsletter"])
    monkeypatch.setattr(CleverReach, name, original)
    assert newsletter.sync_newsletter_consents(lists=["newsletter"]) == {"removed": 1}
    assert receivers(against_sandbox, "1001") == {}
    with transaction() as session:
        assert all(
            r.removed_at is not None
            for r in session.exec(select(Recipient).where(Recipient.processor == "cleverreach")).all()
        )
        failed = session.exec(
            select(AuditEntry).where(AuditEntry.action == "newsletter.remove", AuditEntry.outcome == "failed")
        ).all()
        assert [f.http_status for f in failed] == [400, 503]
        parked = session.exec(
            select(AuditEntry).where(AuditEntry.action == "sync-newsletter-consents:newsletter:removal.park")
        ).all()
        assert [p.outcome for p in parked] == ["retry"]


def test_faults_at_the_processor_still_end_in_the_right_state(against_sandbox, no_sleep):
    requests.post(
        f"{against_sandbox}/_sandbox/reset",
        json={
            "fault_rate": 0.3,
            "seed": 11,
            "kinds": ["429_retry_after", "429_plain", "500", "503", "drop", "token_expiry"],
        },
        timeout=10,
    )
    take_in(*[line for i in range(40) for line in (signup(f"f{i}@example.de"), confirm(f"f{i}@example.de"))])
    take_in(withdraw("f0@example.de"))
    newsletter.sync_newsletter_consents(batch_size=5, records_per_task=10)
    faults = sandbox_state(against_sandbox)["faults"]
    assert sum(faults.values()) > 0 and no_sleep
    assert sorted(receivers(against_sandbox, "1001")) == sorted(f"f{i}@example.de" for i in range(1, 40))


def test_every_call_is_audited_and_the_chain_verifies(against_sandbox):
    take_in(signup("x@example.de"), confirm("x@example.de"), signup("y@example.de"), confirm("y@example.de"))
    newsletter.sync_newsletter_consents()
    take_in(withdraw("y@example.de"))
    newsletter.sync_newsletter_consents()
    served = sum(sandbox_state(against_sandbox)["cleverreach"]["calls"].values())
    with transaction() as session:
        audited = session.exec(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action.startswith("call."))
        ).one()
        assert audited == served
        assert verify(session, KEY).ok


def test_no_personal_data_in_logs_or_artifacts(against_sandbox, caplog):
    from prefect.client.orchestration import get_client

    caplog.set_level(logging.DEBUG)
    take_in(signup("secret.person@example.de"), confirm("secret.person@example.de"))
    newsletter.sync_newsletter_consents()
    requests.post(
        f"{against_sandbox}/_sandbox/cleverreach/unsubscribe", json={"email": "secret.person@example.de"}, timeout=10
    )
    newsletter.pull_newsletter_unsubscribes()
    newsletter.sync_newsletter_consents()
    text = caplog.text + " ".join(map(str, (r.args for r in caplog.records)))
    assert "secret.person" not in text and "192.0.2.10" not in text
    assert "psync.http" in {r.name for r in caplog.records}  # the HTTP layer did log
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    assert artifacts and "secret.person" not in json.dumps([a.data for a in artifacts], default=str)


def test_a_processor_that_keeps_failing_fails_the_run_audited_and_resumable(against_sandbox, no_sleep):
    from flows.common import JobFailed
    from models.cursors import SyncCursor
    from models.parked import ParkedItem, ParkState

    take_in(signup("z@example.de"), confirm("z@example.de"))
    requests.post(f"{against_sandbox}/_sandbox/reset", json={"fault_rate": 1.0, "kinds": ["500"]}, timeout=10)
    with pytest.raises(JobFailed, match=r"0 record\(s\) parked, 1 to retry .*oauth.token: HTTP 500"):
        newsletter.sync_newsletter_consents(lists=["newsletter"])
    with transaction() as session:
        failed = session.exec(select(AuditEntry).where(AuditEntry.outcome.in_(["failed", "retriable"]))).all()
        by_action = Counter(e.action for e in failed)
        # One retry loop: five attempts of the upsert, each failing at its token fetch.
        assert by_action == {"call.oauth.token": 5, "call.receivers.upsert": 1}
        upsert = next(e for e in failed if e.action == "call.receivers.upsert")
        assert upsert.attempts == 5 and len(no_sleep) == 4
        # The record waits for the next run; the stream moved on.
        [item] = session.exec(select(ParkedItem)).all()
        assert (item.job, item.state, item.processor) == (
            "sync-newsletter-consents:newsletter",
            ParkState.retry,
            "cleverreach",
        )
        assert session.get(SyncCursor, "cleverreach:newsletter").position > 0
        assert verify(session, KEY).ok
    requests.post(f"{against_sandbox}/_sandbox/reset", json={"fault_rate": 0.0}, timeout=10)
    assert newsletter.sync_newsletter_consents(lists=["newsletter"])["pushed"] == 1
    with transaction() as session:
        assert session.exec(select(ParkedItem)).one().state == ParkState.resolved


def test_a_returning_subject_keeps_one_register_row(against_sandbox):
    take_in(signup("r@example.de"), confirm("r@example.de"))
    newsletter.sync_newsletter_consents()
    with transaction() as session:
        first = session.exec(select(Recipient).where(Recipient.processor == "cleverreach")).one()
    take_in(withdraw("r@example.de"))
    assert newsletter.sync_newsletter_consents()["removed"] == 1
    later = NOW + timedelta(minutes=5)
    with transaction() as session:
        lines = [signup("r@example.de", at=later), confirm("r@example.de", at=later + timedelta(minutes=1))]
        assert {r.outcome for r in intake_lines(session, KEY, lines, now=later + timedelta(minutes=2))} == {"stored"}
    assert newsletter.sync_newsletter_consents()["pushed"] == 1
    held = receivers(against_sandbox, "1001")
    with transaction() as session:
        again = session.exec(
            select(Recipient).where(Recipient.processor == "cleverreach")
        ).one()  # the upsert updated, not added
    assert (again.id, again.first_sent_at) == (first.id, first.first_sent_at)
    assert again.removed_at is None and again.last_sent_at > first.last_sent_at
    assert "r@example.de" in held and again.confirmed_at > first.confirmed_at


def test_a_consent_confirmed_again_after_the_removals_were_listed_keeps_its_receiver(against_sandbox):
    from connectors import cleverreach
    from core.settings import get_settings

    take_in(signup("back@example.de"), confirm("back@example.de"))
    newsletter.sync_newsletter_consents()
    take_in(withdraw("back@example.de"))
    with transaction() as session:  # what the flow lists before it starts the removal task
        ids = [r.id for r in session.exec(select(Recipient).where(Recipient.processor == "cleverreach")).all()]
    later = NOW + timedelta(minutes=5)
    with transaction() as session:
        lines = [signup("back@example.de", at=later), confirm("back@example.de", at=later + timedelta(minutes=1))]
        assert {r.outcome for r in intake_lines(session, KEY, lines, now=later + timedelta(minutes=2))} == {"stored"}
    client = cleverreach.from_settings(get_settings())
    assert newsletter.remove_batch.fn(client, "newsletter", "1001", ids) == {}
    assert receivers(against_sandbox, "1001")["back@example.de"]["active"] is True
    with transaction() as session:
        assert session.exec(select(Recipient).where(Recipient.processor == "cleverreach")).one().removed_at is None


# the helpers that overlap calls with database work ------------------------------------
def _call(i, log, started=None, seconds=0.005):
    import time

    def run():
        if started is not None:
            started.set()
        log.append(("start", i))
        time.sleep(seconds)
        log.append(("end", i))
        return i

    return run


@pytest.mark.parametrize("in_flight", [1, 2])
def test_overlapped_keeps_the_order_and_at_most_in_flight_calls(in_flight):
    from flows.common import overlapped

    log: list = []
    with overlapped((_call(i, log) for i in range(6)), in_flight=in_flight) as results:
        assert list(results) == list(range(6))
    running = most = 0
    for what, _ in log:
        running += 1 if what == "start" else -1
        most = max(most, running)
    assert most <= in_flight and len(log) == 12


def test_overlapped_raises_where_the_result_is_taken_and_leaves_nothing_running():
    import threading

    from connectors.transport import RetriableError
    from flows.common import overlapped

    def failing():
        raise RetriableError("cleverreach", "receivers.upsert", 503)

    log: list = []
    taken = []
    calls = [_call(0, log), failing, _call(2, log), _call(3, log)]
    with pytest.raises(RetriableError), overlapped(calls, in_flight=2) as results:
        for result in results:
            taken.append(result)
    assert taken == [0]
    # Calls queued behind the failure either ran to their end or never started.
    began = [i for what, i in log if what == "start"]
    assert began[0] == 0 and set(began) <= {0, 2, 3}
    assert sorted(i for what, i in log if what == "end") == sorted(began)

    # An error in the caller's own work: the call on the wire is awaited, not abandoned.
    log.clear()
    started = threading.Event()
    calls = [_call(0, log), _call(1, log, started, seconds=0.05), _call(2, log)]
    with pytest.raises(RuntimeError), overlapped(calls, in_flight=1) as results:
        next(results)
        assert started.wait(1)
        raise RuntimeError("database work failed")
    assert log == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]


def test_concurrently_returns_processor_errors_in_place():
    from connectors.transport import FatalError
    from flows.common import concurrently

    def delete(target):
        if target == "bad":
            raise FatalError("cleverreach", "receivers.delete", 403)
        return target.upper()

    outcomes = concurrently(delete, ["a", "bad", "c", "d"], workers=3)
    assert outcomes[0::2] == ["A", "C"] and outcomes[3] == "D"
    assert isinstance(outcomes[1], FatalError) and outcomes[1].status == 403
    with pytest.raises(ZeroDivisionError):
        concurrently(lambda t: 1 / 0, ["a", "b"], workers=2)


def test_every_change_gets_exactly_one_decision_in_the_audit_trail(against_sandbox):
    """Removed, held and skipped changes get a decision each; the sent ones one per upsert
    call, with how many receivers it carried."""
    take_in(signup("gone@example.de"), confirm("gone@example.de"))
    newsletter.sync_newsletter_consents(lists=["newsletter"])
    with transaction() as session:
        before = session.exec(select(func.max(AuditEntry.id))).one()
    take_in(
        withdraw("gone@example.de"),  # was at CleverReach: removed
        signup("never@example.de"),
        confirm("never@example.de"),
        withdraw("never@example.de"),  # never sent
        signup("waits@example.de"),  # pending
        signup("new@example.de"),
        confirm("new@example.de"),  # sent
    )
    newsletter.sync_newsletter_consents(lists=["newsletter"])
    with transaction() as session:
        names = {s.pseudonym: s.email for s in session.exec(select(DataSubject))}
        names[None] = None
        decisions = Counter(
            (names[e.subject_pseudonym], e.action, e.outcome, e.detail if e.subject_pseudonym is None else "")
            for e in session.exec(
                select(AuditEntry).where(AuditEntry.id > before, AuditEntry.action.startswith("newsletter."))
            )
        )
    assert decisions == {
        ("gone@example.de", "newsletter.remove", "removed", ""): 1,
        ("never@example.de", "newsletter.hold", "skipped", ""): 1,
        ("waits@example.de", "newsletter.hold", "skipped", ""): 1,
        (None, "newsletter.push", "sent", "receivers=1 newsletter"): 1,
    }


def test_a_confirmation_while_the_persons_erasure_is_open_is_held_not_sent(against_sandbox):
    take_in(
        signup("geht@example.de"), confirm("geht@example.de"), signup("bleibt@example.de"), confirm("bleibt@example.de")
    )
    from flows import erasure

    with transaction() as session:
        request_id = erasure.open_erasure_request(session, email="geht@example.de", channel="letter").id
    counts = newsletter.sync_newsletter_consents(lists=["newsletter"])
    assert counts == {"pushed": 1, "held_erasure_open": 1}
    assert sorted(receivers(against_sandbox, "1001")) == ["bleibt@example.de"]
    with transaction() as session:
        held = session.exec(
            select(AuditEntry).where(AuditEntry.action == "newsletter.push", AuditEntry.outcome == "held")
        ).all()
        assert len(held) == 1
    assert erasure.fan_out_erasure(request_id=str(request_id)) == {"completed": 1}


def test_an_erasure_request_that_overtakes_the_signup_keeps_the_person_out_of_cleverreach(against_sandbox):
    # The portal's "delete my data" reaches us before the sign-up and confirmation it
    # follows (another file, another request): by event time the erasure is the latest
    # decision. Früh's data arrives while the request is open, Spät's after it completed.
    from flows import erasure

    def erase(email: str) -> str:
        at = (NOW - timedelta(minutes=30)).isoformat()
        return json.dumps({"type": "erasure.request", "email": email, "channel": "portal", "at": at})

    with transaction() as session:
        results = intake_lines(session, KEY, [erase("frueh@example.de"), erase("spaet@example.de")], now=NOW)
    assert [r.outcome for r in results] == ["stored", "stored"]
    assert "nobody is known by this address yet" in results[0].reason
    take_in(signup("frueh@example.de"), confirm("frueh@example.de"))
    assert newsletter.sync_newsletter_consents(lists=["newsletter"]) == {"held_erasure_open": 1}
    assert erasure.follow_up_erasures()["completed"] == 2
    with transaction() as session:
        late = intake_lines(session, KEY, [signup("spaet@example.de"), confirm("spaet@example.de")], now=NOW)
    assert [r.outcome for r in late] == ["unchanged", "unchanged"]
    assert newsletter.sync_newsletter_consents(lists=["newsletter"]) == {}
    assert receivers(against_sandbox, "1001") == {}
    with transaction() as session:
        subjects = session.exec(select(DataSubject)).all()
        assert len(subjects) == 2 and all(s.erased_at and s.email is None and s.first_name is None for s in subjects)


def test_a_confirmation_awaiting_its_signup_is_found_by_access_and_erasure_requests(against_sandbox):
    from flows import erasure

    def ask(kind: str, **fields) -> str:
        return json.dumps({"type": kind, "email": "w@example.de", "channel": "portal", "at": NOW.isoformat(), **fields})

    with transaction() as session:
        assert [r.outcome for r in intake_lines(session, KEY, [confirm("w@example.de")], now=NOW)] == ["pending"]
    with transaction() as session:
        asked = intake_lines(session, KEY, [ask("rights.request", right="access"), ask("erasure.request")], now=NOW)
    assert [(r.outcome, r.reason) for r in asked] == [("stored", ""), ("stored", "")]  # someone known
    assert erasure.follow_up_erasures()["completed"] == 1
    with transaction() as session:
        assert session.exec(select(ConsentEvent.ip)).all() == [None]
        assert session.exec(select(ConsentRecord.state)).all() == [ConsentState.withdrawn]
    with transaction() as session:
        late = intake_lines(session, KEY, [signup("w@example.de"), confirm("w@example.de")], now=NOW)
    assert [r.outcome for r in late] == ["unchanged", "duplicate"]
    assert newsletter.sync_newsletter_consents(lists=["newsletter"]) == {}


def _restrict(email: str) -> uuid.UUID:
    from models.restriction import Restriction

    with transaction() as session:
        subject = session.exec(select(DataSubject).where(DataSubject.email == email)).one().id
        session.add(Restriction(subject_id=subject, reason="Test", restricted_at=NOW, recorded_at=NOW))
    return subject


def _lift(subject: uuid.UUID) -> None:
    from models.restriction import active_restriction

    with transaction() as session:
        found = active_restriction(session, subject)
        if found is not None:
            found.lifted_at, found.lift_reason, found.lift_recorded_at = utcnow(), "Test", utcnow()


def _unregistered_at_cleverreach(url: str) -> set[str]:
    """Addresses CleverReach holds that the register has no row for: data that left
    without being registered first."""
    held = set(receivers(url, "1001"))
    with transaction() as session:
        registered = set(
            session.exec(
                select(DataSubject.email)
                .join(Recipient, col(Recipient.subject_id) == col(DataSubject.id))
                .where(Recipient.processor == "cleverreach")
            )
        )
    return held - registered


def test_a_restriction_lifted_between_write_ahead_and_send_holds_the_record_for_the_next_run(
    against_sandbox, monkeypatch
):
    from flows import delivery

    emails = [f"s{i}@example.de" for i in range(5)]
    take_in(*[line for e in emails for line in (signup(e), confirm(e))])
    subject = _restrict("s2@example.de")
    send = delivery._send

    def lift_then_send(*args, **kwargs):  # step 1 committed, s2 left out of it; now the lift
        _lift(subject)
        with transaction() as session:  # and another job's hold the lift did not see
            session.add(RestrictionHold(subject_id=subject, job="push-bookings", record_id="B-S2", held_at=NOW))
        return send(*args, **kwargs)

    monkeypatch.setattr(delivery, "_send", lift_then_send)
    # s2 waits in the retry queue for the next run: nothing was tried, so no failure.
    assert newsletter.sync_newsletter_consents(lists=["newsletter"]) == {"pushed": 4, "held_restricted": 1}
    with transaction() as session:
        holds = {h.job: h.released_at for h in session.exec(select(RestrictionHold))}
    # Its own hold released; the other job's is that job's to release, under its own cursor.
    assert holds["sync-newsletter-consents:newsletter"] is not None and holds["push-bookings"] is None
    assert not _unregistered_at_cleverreach(against_sandbox)
    assert "s2@example.de" not in receivers(against_sandbox, "1001")
    monkeypatch.setattr(delivery, "_send", send)
    newsletter.sync_newsletter_consents(lists=["newsletter"])
    assert sorted(receivers(against_sandbox, "1001")) == emails
    assert not _unregistered_at_cleverreach(against_sandbox)


def test_a_restriction_lifted_between_batches_is_sent_registered(against_sandbox, monkeypatch):
    from flows import delivery

    emails = [f"r{i:02}@example.de" for i in range(15)]
    take_in(*[line for e in emails for line in (signup(e), confirm(e))])
    subject = _restrict("r12@example.de")
    settle, starts = delivery.journal.settle_now, []

    def lift_at_the_second_batch():  # the first batch (which may write the second ahead) committed
        starts.append(1)
        if len(starts) == 2:
            _lift(subject)
        return settle()

    monkeypatch.setattr(delivery.journal, "settle_now", lift_at_the_second_batch)
    newsletter.sync_newsletter_consents(lists=["newsletter"], batch_size=5, records_per_task=10)
    assert len(starts) >= 2
    # The first batch wrote the second ahead without r12 and said so on the mark: the
    # second holds r12 (to the retry queue, as the restriction is lifted), the next run sends it.
    assert sorted(receivers(against_sandbox, "1001")) == [e for e in emails if e != "r12@example.de"]
    assert not _unregistered_at_cleverreach(against_sandbox)
    newsletter.sync_newsletter_consents(lists=["newsletter"], batch_size=5, records_per_task=10)
    assert sorted(receivers(against_sandbox, "1001")) == emails
    assert not _unregistered_at_cleverreach(against_sandbox)


def test_a_hold_the_lift_did_not_see_is_released_and_sent_by_the_next_sync(against_sandbox):
    # On PostgreSQL a batch that read the person as restricted just before the lift committed
    # writes its hold after the lift's release looked: here that hold, lifted without one.
    from models.restriction import RestrictionHold

    take_in(signup("a@example.de"), confirm("a@example.de"), signup("b@example.de"), confirm("b@example.de"))
    subject = _restrict("b@example.de")
    assert newsletter.sync_newsletter_consents(lists=["newsletter"]) == {"pushed": 1, "held_restricted": 1}
    _lift(subject)  # the restriction ends; the hold stays unreleased
    with transaction() as session:
        assert session.exec(select(RestrictionHold.released_at)).all() == [None]
    counts = newsletter.sync_newsletter_consents(lists=["newsletter"])
    assert counts == {"pushed": 1}
    assert sorted(receivers(against_sandbox, "1001")) == ["a@example.de", "b@example.de"]
    assert not _unregistered_at_cleverreach(against_sandbox)
    with transaction() as session:
        assert None not in session.exec(select(RestrictionHold.released_at)).all()


def test_a_record_queued_for_retry_between_write_ahead_and_send_waits_for_the_next_batch(against_sandbox, monkeypatch):
    from flows import delivery
    from models.restriction import release

    take_in(signup("a@example.de"), confirm("a@example.de"), signup("b@example.de"), confirm("b@example.de"))
    subject = _restrict("b@example.de")
    assert newsletter.sync_newsletter_consents(lists=["newsletter"]) == {"pushed": 1, "held_restricted": 1}
    send = delivery._send

    def release_then_send(*args, **kwargs):  # step 1 took nothing from the retry queue
        _lift(subject)
        with transaction() as session:
            release(session, subject, utcnow())
        return send(*args, **kwargs)

    take_in(signup("c@example.de"), confirm("c@example.de"))
    monkeypatch.setattr(delivery, "_send", release_then_send)
    newsletter.sync_newsletter_consents(lists=["newsletter"])
    assert not _unregistered_at_cleverreach(against_sandbox)
    monkeypatch.setattr(delivery, "_send", send)
    newsletter.sync_newsletter_consents(lists=["newsletter"])
    assert sorted(receivers(against_sandbox, "1001")) == ["a@example.de", "b@example.de", "c@example.de"]
    assert not _unregistered_at_cleverreach(against_sandbox)


# the delivery path (flows/delivery.py) at the default sizes ----------------------------------
def test_a_poison_consent_among_3000_is_parked_by_its_id_and_the_2999_others_go(against_sandbox):
    """CleverReach refuses a whole upsert batch for one bad receiver (400, all or nothing):
    the batch is split down to that receiver, which is parked; the others are sent."""
    from flows.common import JobFailed
    from models.consent import ConsentRecord
    from models.parked import ParkedItem

    emails = [f"leser{i}@example.de" for i in range(3000)]
    take_in(*[line for e in emails for line in (signup(e), confirm(e))])
    with transaction() as session:  # an address CleverReach refuses (intake would refuse it too)
        poison = session.exec(select(DataSubject).where(DataSubject.email == emails[1500])).one()
        poison.email = "leser1500-ohne-domain"
        consent_id = str(session.exec(select(ConsentRecord.id).where(ConsentRecord.subject_id == poison.id)).one())
    before = calls(against_sandbox, UPSERT)
    with pytest.raises(JobFailed) as failed:
        newsletter.sync_newsletter_consents(lists=["newsletter"])  # the defaults: 250 a call
    message = str(failed.value)
    assert message.startswith("sync-newsletter-consents:newsletter: 1 record(s) parked, 0 to retry")
    assert f"{consent_id}: cleverreach receivers.upsert: HTTP 400" in message and "leser" not in message
    held = receivers(against_sandbox, "1001")
    assert len(held) == 2999 and emails[1500] not in held
    # 12 batches, one of them split down to its bad receiver: 2 calls per halving, at most
    # 8 halvings for 250.
    assert 12 + 2 < calls(against_sandbox, UPSERT) - before <= 12 + 2 * 8
    with transaction() as session:
        [item] = session.exec(select(ParkedItem)).all()
        assert (item.record_id, item.state, item.operation) == (consent_id, "parked", "receivers.upsert")
        # Written ahead: an erasure finds the receiver it may have reached.
        assert (
            session.exec(
                select(Recipient).where(Recipient.processor == "cleverreach").where(Recipient.subject_id == poison.id)
            )
            .one()
            .removed_at
            is None
        )
    assert newsletter.sync_newsletter_consents(lists=["newsletter"]) == {}  # the stream moved on


def test_a_removal_refused_for_one_receiver_holds_up_neither_the_others_nor_the_push(against_sandbox):
    """The removal stops mailing with one upsert too: one address CleverReach refuses there
    must not fail the batch (and every later run with it)."""
    from flows.common import JobFailed

    def readdress(old: str, new: str) -> None:  # an address CleverReach refuses (intake would too)
        with transaction() as session:
            session.exec(select(DataSubject).where(DataSubject.email == old)).one().email = new

    take_in(*[line for e in ("q0@example.de", "q1@example.de") for line in (signup(e), confirm(e))])
    add_foreign_group()  # no account-wide delete: a removal deactivates by upsert, then deletes
    readdress("q1@example.de", "q1-ohne-domain")
    with pytest.raises(JobFailed):  # q1 refused and parked (its "may hold" row stays live)
        newsletter.sync_newsletter_consents(lists=["newsletter"])
    readdress("q1-ohne-domain", "q1@example.de")
    take_in(withdraw("q1@example.de"), withdraw("q0@example.de"), signup("q2@example.de"), confirm("q2@example.de"))
    readdress("q1@example.de", "q1-ohne-domain")
    newsletter.sync_newsletter_consents(lists=["newsletter"])
    assert list(receivers(against_sandbox, "1001")) == ["q2@example.de"]
    with transaction() as session:
        live = session.exec(
            select(DataSubject.email)
            .join(Recipient, col(Recipient.subject_id) == col(DataSubject.id))
            .where(Recipient.processor == "cleverreach", col(Recipient.removed_at).is_(None))
        ).all()
    assert live == ["q2@example.de"]


def test_isolate_finds_the_records_a_batch_was_refused_for_and_sends_the_rest():
    from connectors.transport import FatalError, RetriableError
    from flows.delivery import isolate

    sent: list[list[int]] = []

    def send(rows):
        sent.append(rows)
        if {13, 40} & set(rows):
            raise FatalError("cleverreach", "receivers.upsert", 400)
        return len(rows)

    done, failed = isolate(send, list(range(64)))
    assert sorted(r for rows, _ in done for r in rows) == [r for r in range(64) if r not in (13, 40)]
    assert [(r, e.status) for r, e in failed] == [(13, 400), (40, 400)]
    assert len(sent) == 1 + 2 * 2 * 6 - 2  # two paths of six halvings share the first split

    # A retriable failure is the batch's: every record gets it, nothing is split.
    def down(rows):
        raise RetriableError("cleverreach", "receivers.upsert", 503, 5)

    done, failed = isolate(down, list(range(8)))
    assert done == [] and [r for r, _ in failed] == list(range(8))
    # Auth is nobody's record: raised.
    with pytest.raises(FatalError):
        isolate(lambda rows: (_ for _ in ()).throw(FatalError("cleverreach", "receivers.upsert", 401)), [1, 2])


def test_a_sync_starts_with_a_small_task_so_the_calls_start_soon():
    # The sizes' examples (doctest): a small first task, then records_per_task each.
    import doctest

    assert doctest.testmod(newsletter).attempted >= 2
    assert doctest.testmod(newsletter).failed == 0
    assert newsletter.task_sizes(20001, 20000) == [2000, 20000]
