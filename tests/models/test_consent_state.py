"""The double-opt-in state machine and the calendar-day expiry in Europe/Berlin."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from models.consent import (
    ConsentRecord,
    ConsentState,
    EventKind,
    TransitionError,
    apply_confirm,
    apply_expire,
    apply_signup,
    apply_withdraw,
    expiry_due,
)

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


def record() -> ConsentRecord:
    return ConsentRecord(
        subject_id=uuid.uuid4(), list_name="newsletter", state=ConsentState.pending,
        signup_at=T0,
    )  # fmt: skip


def signed_up(at: datetime = T0) -> ConsentRecord:
    r = record()
    apply_signup(r, at, "192.0.2.1", "https://example.de/nl", "2026-01", 1, "k-signup")
    return r


def confirmed(at: datetime = T0 + timedelta(hours=1)) -> ConsentRecord:
    r = signed_up()
    apply_confirm(r, at, "192.0.2.2", 2, "k-confirm")
    return r


def test_signup_makes_a_pending_record_and_an_event():
    r = record()
    event = apply_signup(r, T0, "192.0.2.1", "https://example.de/nl", "2026-01", 7, "k1")
    assert r.state == ConsentState.pending
    assert (r.signup_at, r.signup_ip, r.change_seq) == (T0, "192.0.2.1", 7)
    assert (r.source, r.policy_version) == ("https://example.de/nl", "2026-01")
    assert event.kind == EventKind.signup
    assert (event.consent_id, event.at, event.ip, event.dedupe_key) == (r.id, T0, "192.0.2.1", "k1")


def test_pending_confirmed_withdrawn():
    r = signed_up()
    at_confirm = T0 + timedelta(minutes=10)
    event = apply_confirm(r, at_confirm, "192.0.2.2", 2, "k2")
    assert r.state == ConsentState.confirmed
    assert (r.confirm_at, r.confirm_ip, r.change_seq) == (at_confirm, "192.0.2.2", 2)
    assert (event.kind, event.ip) == (EventKind.confirm, "192.0.2.2")

    at_withdraw = T0 + timedelta(days=3)
    event = apply_withdraw(r, at_withdraw, "portal", 3, "k3")
    assert r.state == ConsentState.withdrawn
    assert (r.withdrawn_at, r.withdraw_channel, r.change_seq) == (at_withdraw, "portal", 3)
    assert (event.kind, event.channel) == (EventKind.withdraw, "portal")


def test_pending_can_be_withdrawn():
    r = signed_up()
    assert apply_withdraw(r, T0 + timedelta(hours=1), "email", 2, "k2") is not None
    assert r.state == ConsentState.withdrawn


def test_confirm_without_signup_raises():
    with pytest.raises(TransitionError, match="no sign-up"):
        apply_confirm(None, T0, "192.0.2.2", 1, "k")


@pytest.mark.parametrize("final", ["withdrawn", "expired"])
def test_confirm_of_ended_signup_raises(final):
    r = signed_up()
    if final == "withdrawn":
        apply_withdraw(r, T0 + timedelta(hours=1), "email", 2, "k2")
    else:
        apply_expire(r, T0 + timedelta(days=31), "k2")
    before = (r.state, r.change_seq, r.confirm_at)
    with pytest.raises(TransitionError, match="new sign-up is needed"):
        apply_confirm(r, T0 + timedelta(days=40), "192.0.2.2", 9, "k9")
    assert (r.state, r.change_seq, r.confirm_at) == before


def test_confirm_before_signup_raises():
    r = signed_up()
    with pytest.raises(TransitionError, match="earlier than the sign-up"):
        apply_confirm(r, T0 - timedelta(seconds=1), "192.0.2.2", 2, "k2")
    assert r.state == ConsentState.pending
    assert r.confirm_at is None


def test_confirm_at_the_signup_instant_is_allowed():
    r = signed_up()
    assert apply_confirm(r, T0, "192.0.2.2", 2, "k2") is not None


def test_repeated_confirm_changes_nothing():
    r = confirmed()
    before = (r.confirm_at, r.confirm_ip, r.change_seq)
    assert apply_confirm(r, T0 + timedelta(days=1), "192.0.2.9", 5, "k5") is None
    assert (r.confirm_at, r.confirm_ip, r.change_seq) == before


def test_withdraw_of_withdrawn_changes_nothing():
    r = confirmed()
    first = T0 + timedelta(days=2)
    apply_withdraw(r, first, "email", 3, "k3")
    assert apply_withdraw(r, first + timedelta(days=1), "portal", 4, "k4") is None
    assert (r.withdrawn_at, r.withdraw_channel, r.change_seq) == (first, "email", 3)


def test_withdraw_of_expired_changes_nothing():
    r = signed_up()
    apply_expire(r, T0 + timedelta(days=31), "kx")
    assert apply_withdraw(r, T0 + timedelta(days=32), "email", 4, "k4") is None
    assert r.state == ConsentState.expired


def test_signup_while_confirmed_changes_nothing():
    r = confirmed()
    assert apply_signup(r, T0 + timedelta(days=5), "192.0.2.7", "s", "p", 9, "k9") is None
    assert r.state == ConsentState.confirmed
    assert r.signup_at == T0


def test_resignup_after_withdrawal_starts_a_new_cycle():
    r = confirmed()
    apply_withdraw(r, T0 + timedelta(days=2), "newsletter-link", 3, "k3")
    again = T0 + timedelta(days=10)
    event = apply_signup(r, again, "192.0.2.8", "https://example.de/nl2", "2026-02", 4, "k4")
    assert event is not None and event.kind == EventKind.signup
    assert r.state == ConsentState.pending
    assert (r.signup_at, r.signup_ip, r.policy_version) == (again, "192.0.2.8", "2026-02")
    assert r.confirm_at is None and r.confirm_ip is None
    assert r.withdrawn_at is None and r.withdraw_channel is None
    # and the new cycle can be confirmed again
    assert apply_confirm(r, again + timedelta(minutes=5), "192.0.2.8", 5, "k5") is not None
    assert r.state == ConsentState.confirmed


def test_resignup_after_expiry_starts_a_new_cycle():
    r = signed_up()
    apply_expire(r, T0 + timedelta(days=31), "kx")
    again = T0 + timedelta(days=40)
    assert apply_signup(r, again, "192.0.2.8", "s", "p", 4, "k4") is not None
    assert r.state == ConsentState.pending
    assert r.expired_at is None
    assert (r.signup_at, r.signup_ip) == (again, "192.0.2.8")


def test_expire_drops_ips_and_source():
    r = signed_up()
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
    r = confirmed()
    if state == "withdrawn":
        apply_withdraw(r, T0 + timedelta(days=1), "email", 3, "k3")
    elif state == "expired":
        r = signed_up()
        apply_expire(r, T0 + timedelta(days=31), "kx")
    with pytest.raises(TransitionError, match="only pending"):
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
