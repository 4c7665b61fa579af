"""The double-opt-in state machine (a record is the replay of its history, by event time)
and the calendar-day expiry in Europe/Berlin."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from models.consent import (
    ENDED,
    ConsentRecord,
    ConsentState,
    EventKind,
    Step,
    TransitionError,
    apply_expire,
    apply_withdraw,
    cut_of,
    expiry_due,
    replay,
    settle,
)

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


def signup(at: datetime = T0, ip: str = "192.0.2.1", key: str | None = None) -> Step:
    return Step(
        "signup", at, key or f"s{at.isoformat()}{ip}", ip=ip, source="https://example.de/nl", policy_version="2026-01"
    )


def confirm(at: datetime = T0 + timedelta(hours=1), ip: str = "192.0.2.2") -> Step:
    return Step("confirm", at, f"c{at.isoformat()}{ip}", ip=ip)


def withdraw(at: datetime = T0 + timedelta(days=3), channel: str = "portal") -> Step:
    return Step("withdraw", at, f"w{at.isoformat()}{channel}", channel=channel)


def expire(at: datetime = T0 + timedelta(days=31)) -> Step:
    return Step("expire", at, f"x{at.isoformat()}")


def record() -> ConsentRecord:
    return ConsentRecord(
        subject_id=uuid.uuid4(),
        list_name="newsletter",
        state=ConsentState.pending,
        signup_at=T0,
    )


def test_a_signup_is_pending_with_its_proof():
    d = replay([signup()])
    assert d.state == ConsentState.pending
    assert (d.signup_at, d.signup_ip, d.source, d.policy_version) == (
        T0,
        "192.0.2.1",
        "https://example.de/nl",
        "2026-01",
    )
    assert d.confirm_at is None and d.decided == signup()


def test_pending_confirmed_withdrawn():
    d = replay([signup(), confirm()])
    assert d.state == ConsentState.confirmed
    assert (d.confirm_at, d.confirm_ip) == (T0 + timedelta(hours=1), "192.0.2.2")
    d = replay([signup(), confirm(), withdraw()])
    assert d.state == ConsentState.withdrawn
    assert (d.withdrawn_at, d.withdraw_channel) == (T0 + timedelta(days=3), "portal")
    # the proof of the consent that stood stays with the withdrawn record
    assert (d.signup_ip, d.confirm_ip) == ("192.0.2.1", "192.0.2.2")


def test_pending_can_be_withdrawn():
    assert replay([signup(), withdraw(T0 + timedelta(hours=1))]).state == ConsentState.withdrawn


def test_the_order_events_are_stored_in_does_not_matter():
    history = [
        signup(),
        confirm(),
        withdraw(),
        signup(T0 + timedelta(days=4), "192.0.2.8"),
        confirm(T0 + timedelta(days=4, minutes=5), "192.0.2.9"),
    ]
    expected = replay(history)
    assert expected.state == ConsentState.confirmed and expected.signup_ip == "192.0.2.8"
    for shift in range(len(history)):
        assert replay(history[shift:] + history[:shift]) == expected
        assert replay(list(reversed(history[shift:] + history[:shift]))) == expected


def test_a_confirmation_needs_a_signup_before_it():
    assert replay([confirm(T0 - timedelta(seconds=1)), signup()]).state == ConsentState.pending
    assert replay([confirm(T0), signup(T0)]).state == ConsentState.confirmed  # the same instant


def test_a_confirmation_after_a_withdrawal_does_not_revive_its_signup():
    # The link in an old mail, clicked after the person withdrew.
    d = replay([signup(), withdraw(T0 + timedelta(minutes=30)), confirm(T0 + timedelta(hours=1))])
    assert d.state == ConsentState.withdrawn and d.confirm_at is None


def test_a_signup_after_a_withdrawal_needs_a_new_confirmation():
    d = replay([signup(), confirm(), withdraw(T0 + timedelta(days=1)), signup(T0 + timedelta(days=1, seconds=1))])
    assert d.state == ConsentState.pending
    assert d.confirm_at is None and d.withdrawn_at is None


def test_a_withdrawal_at_the_same_instant_wins():
    assert replay([signup(), withdraw(T0)]).state == ConsentState.withdrawn
    assert replay([signup(), confirm(T0 + timedelta(hours=1)), withdraw(T0 + timedelta(hours=1))]).state == "withdrawn"


def test_equal_times_of_one_kind_order_by_key_wherever_they_arrive():
    a, b = signup(T0, "192.0.2.1", key="a"), signup(T0, "192.0.2.9", key="b")
    assert replay([a, b]).signup_ip == replay([b, a]).signup_ip == "192.0.2.9"


def test_a_withdrawal_without_a_signup_is_kept_and_an_earlier_signup_does_not_subscribe():
    d = replay([withdraw()])
    assert d.state == ConsentState.withdrawn and d.signup_at is None
    d = replay([withdraw(), signup(), confirm()])
    assert d.state == ConsentState.withdrawn and d.signup_at == T0
    d = replay([withdraw(), signup(T0 + timedelta(days=4))])
    assert d.state == ConsentState.pending


def test_the_first_withdrawal_of_a_cycle_counts():
    first = T0 + timedelta(days=2)
    d = replay([signup(), confirm(), withdraw(first + timedelta(days=1), "portal"), withdraw(first, "email")])
    assert (d.withdrawn_at, d.withdraw_channel) == (first, "email")


def test_signup_while_confirmed_changes_nothing():
    d = replay([signup(), confirm(), signup(T0 + timedelta(days=5), "192.0.2.7")])
    assert d == replay([signup(), confirm()])


def test_signup_again_while_pending_starts_over():
    d = replay([signup(), signup(T0 + timedelta(days=1), "192.0.2.7")])
    assert (d.state, d.signup_at, d.signup_ip) == (ConsentState.pending, T0 + timedelta(days=1), "192.0.2.7")


def test_an_expiry_ends_the_cycle_and_drops_its_ips():
    d = replay([signup(), expire()])
    assert d.state == ConsentState.expired and d.expired_at == T0 + timedelta(days=31)
    assert d.signup_ip is None and d.source is None and d.signup_at == T0
    # a confirmation dated before the expiry that arrives after it is older than that decision
    assert replay([signup(), expire(), confirm()]).state == ConsentState.expired
    d = replay([signup(), expire(), signup(T0 + timedelta(days=40), "192.0.2.8")])
    assert (d.state, d.signup_ip, d.expired_at) == (ConsentState.pending, "192.0.2.8", None)


def test_events_up_to_an_erasure_do_not_count_and_the_record_stays_as_it_was():
    erased = T0 + timedelta(days=10)
    history = [signup(), confirm(), Step(EventKind.erase, erased, "e")]
    assert cut_of(history) == erased and cut_of([signup()], erased) == erased
    assert replay(history, cut_of(history)).state == ENDED
    assert replay([*history, withdraw(erased + timedelta(days=1))], erased).state == ENDED
    assert replay([*history, confirm(erased + timedelta(days=1))], erased).state == ENDED
    d = replay([*history, signup(erased + timedelta(days=1), "192.0.2.8")], erased)
    assert (d.state, d.signup_ip, d.confirm_at) == (ConsentState.pending, "192.0.2.8", None)
    # a record begun after the erasure starts from nothing
    assert replay([withdraw(erased + timedelta(days=1))], erased).state == ConsentState.withdrawn


def test_settle_writes_the_proof_and_a_change_number():
    r = record()
    settle(r, replay([signup(), confirm()]), 7)
    assert (r.state, r.signup_ip, r.confirm_ip, r.change_seq) == ("confirmed", "192.0.2.1", "192.0.2.2", 7)
    r = record()
    settle(r, replay([withdraw()]), None)
    assert (r.state, r.signup_at, r.change_seq) == ("withdrawn", T0 + timedelta(days=3), 0)


def settled(*steps: Step) -> ConsentRecord:
    r = record()
    settle(r, replay(steps), 1)
    return r


def test_apply_withdraw_ends_a_standing_consent():
    r = settled(signup(), confirm())
    at = T0 + timedelta(days=3)
    event = apply_withdraw(r, at, "newsletter-link", 3, "k3")
    assert event is not None and (event.kind, event.channel) == (EventKind.withdraw, "newsletter-link")
    assert (r.state, r.withdrawn_at, r.change_seq) == (ConsentState.withdrawn, at, 3)


def test_apply_withdraw_of_an_earlier_cycle_or_of_no_consent_changes_nothing():
    r = settled(signup(T0 + timedelta(days=5)), confirm(T0 + timedelta(days=5, hours=1)))
    assert apply_withdraw(r, T0 + timedelta(days=4), "newsletter-link", 3, "k3") is None
    assert r.state == ConsentState.confirmed
    r = settled(signup(), withdraw())
    assert apply_withdraw(r, T0 + timedelta(days=4), "email", 4, "k4") is None
    assert r.withdrawn_at == T0 + timedelta(days=3)


def test_expire_drops_ips_and_source():
    r = settled(signup())
    at = T0 + timedelta(days=31)
    event = apply_expire(r, at, "kx")
    assert r.state == ConsentState.expired
    assert r.expired_at == at
    assert r.signup_ip is None and r.confirm_ip is None and r.source is None
    assert event.kind == EventKind.expire and event.ip is None
    # the fact that a sign-up existed stays
    assert r.signup_at == T0


@pytest.mark.parametrize("state", ["confirmed", "withdrawn", "expired"])
def test_expire_only_from_pending(state):
    steps = {"confirmed": [signup(), confirm()], "withdrawn": [signup(), withdraw()], "expired": [signup(), expire()]}
    r = settled(*steps[state])
    with pytest.raises(TransitionError, match="only unconfirmed sign-ups expire"):
        apply_expire(r, T0 + timedelta(days=60), "ky")
    assert r.state == state


# expiry --------------------------------------------------------------------------------


def berlin(*args) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def is_due(signup_at: datetime, days: int, now: datetime) -> bool:
    # The comparison the expire flow makes (flows/newsletter.py).
    return expiry_due(signup_at, days) <= now


@pytest.mark.parametrize("days", [30, 21])
def test_due_exactly_at_the_instant_not_a_second_before(days):
    signup = berlin(2026, 7, 1, 14, 30).astimezone(UTC)
    due = berlin(2026, 7, 1 + days, 14, 30)
    assert expiry_due(signup, days) == due
    assert is_due(signup, days, due)
    assert not is_due(signup, days, due - timedelta(seconds=1))
    assert is_due(signup, days, due + timedelta(seconds=1))


def test_newsletter_30_days_across_spring_dst():
    signup = berlin(2026, 3, 10, 10, 0).astimezone(UTC)  # 09:00 UTC, CET
    due = expiry_due(signup, 30)
    assert due == datetime(2026, 4, 9, 8, 0, tzinfo=UTC)  # 10:00 CEST
    assert due.astimezone(BERLIN).hour == 10
    assert due != signup + timedelta(days=30)  # 24-hour days would say 09:00 UTC
    assert not is_due(signup, 30, datetime(2026, 4, 9, 7, 59, 59, tzinfo=UTC))
    assert is_due(signup, 30, datetime(2026, 4, 9, 8, 0, tzinfo=UTC))


def test_service_offers_21_days_across_spring_dst():
    signup = berlin(2026, 3, 20, 23, 30).astimezone(UTC)  # 22:30 UTC
    assert expiry_due(signup, 21) == datetime(2026, 4, 10, 21, 30, tzinfo=UTC)


def test_newsletter_30_days_across_autumn_dst():
    # DST ends 2026-10-25 03:00 CEST -> 02:00 CET.
    signup = berlin(2026, 10, 10, 10, 0).astimezone(UTC)  # 08:00 UTC, CEST
    due = expiry_due(signup, 30)
    assert due == datetime(2026, 11, 9, 9, 0, tzinfo=UTC)  # 10:00 CET
    assert due.astimezone(BERLIN).hour == 10
    assert not is_due(signup, 30, datetime(2026, 11, 9, 8, 59, 59, tzinfo=UTC))
    assert is_due(signup, 30, datetime(2026, 11, 9, 9, 0, tzinfo=UTC))


def test_service_offers_21_days_across_autumn_dst():
    signup = berlin(2026, 10, 20, 0, 15).astimezone(UTC)  # 2026-10-19 22:15 UTC
    assert expiry_due(signup, 21) == datetime(2026, 11, 9, 23, 15, tzinfo=UTC)


def test_due_keeps_the_callers_zone():
    signup = datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    due = expiry_due(signup, 30)
    assert due.utcoffset() == timedelta(0)
    assert due.isoformat() == "2026-03-31T10:00:00+00:00"
