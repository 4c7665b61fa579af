"""Synthetic subscriptions, fed through the real intake (``flows.intake.import_lines``, as ``psync intake`` does)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

from core.settings import get_settings
from flows.intake import import_lines
from models.types import utcnow

LIST = "newsletter"
SALUTATIONS = ("Frau", "Herr", None)


def email(i: int) -> str:
    return f"bench{i}@example.de"


def _ip(i: int) -> str:
    # TEST-NET-3 (RFC 5737), so nothing here is anybody's real address
    return f"203.0.113.{i % 250 + 1}"


def signup_confirm_events(start: int, stop: int, signup_base: datetime) -> Iterator[tuple[dict, dict]]:
    """A sign-up and its confirmation, as the website hands them over, for subjects start..stop-1."""
    for i in range(start, stop):
        at = signup_base + timedelta(milliseconds=10 * (i - start))
        signup = {
            "type": "consent.signup",
            "list": LIST,
            "email": email(i),
            "at": at.isoformat(),
            "salutation": SALUTATIONS[i % 3],
            "first_name": f"Vorname{i}",
            "last_name": f"Nachname{i}",
            "ip": _ip(i),
            "source": "https://www.example.de/newsletter",
            "policy_version": "2026-01",
        }
        confirm = {
            "type": "consent.confirm",
            "list": LIST,
            "email": email(i),
            "at": (at + timedelta(minutes=7)).isoformat(),
            "ip": _ip(i + 1),
        }
        yield signup, confirm


def signup_confirm_lines(start: int, stop: int, signup_base: datetime) -> Iterator[str]:
    """``signup_confirm_events`` as intake lines."""
    for signup, confirm in signup_confirm_events(start, stop, signup_base):
        yield json.dumps(signup)
        yield json.dumps(confirm)


def withdraw_lines(indices: list[int], at: datetime) -> Iterator[str]:
    for i in indices:
        yield json.dumps(
            {
                "type": "consent.withdraw",
                "list": LIST,
                "email": email(i),
                "at": at.isoformat(),
                "channel": "portal" if i % 2 else "email",
            }
        )


def intake(lines: list[str], url: str | None = None) -> Counter[str]:
    """An intake of these lines as ``psync intake FILE`` does it (``import_lines``: a
    transaction per chunk); returns outcome counts."""
    key = get_settings().hmac_key()
    results = [r for chunk in import_lines(key, lines, now=utcnow(), url=url) for r in chunk]
    counts = Counter(r.outcome for r in results)
    if counts.get("rejected"):
        reasons = Counter(r.reason for r in results if r.outcome == "rejected")
        raise RuntimeError(f"intake rejected lines: {dict(reasons.most_common(3))}")
    return counts


def signup_base() -> datetime:
    """When the seeded sign-ups start (20 days ago: confirmed, none about to expire)."""
    return utcnow() - timedelta(days=20)


def seed(n: int, slice_subjects: int, url: str | None = None, base: datetime | None = None) -> Counter[str]:
    """N confirmed subscriptions, an intake per slice of `slice_subjects`."""
    base = base or signup_base()
    total: Counter[str] = Counter()
    for start in range(0, n, slice_subjects):
        stop = min(n, start + slice_subjects)
        total.update(intake(list(signup_confirm_lines(start, stop, base)), url))
    return total


def change_one_percent(n: int, round_: int = 0) -> dict:
    """Withdraw 0.5% of the N subscriptions and add 0.5% new confirmed ones (1% in all).

    Each `round_` (0, 1, ...) changes other subscriptions than the rounds before it.
    """
    changes = max(2, round(n * 0.01))
    withdraw = changes // 2
    new = changes - withdraw
    step = n // withdraw
    if not 0 <= round_ < step:
        raise ValueError(f"round_ must be 0..{step - 1}")
    withdrawn = [i * step + round_ for i in range(withdraw)]  # spread over the whole id range
    first_new = n + round_ * new
    now = utcnow()
    lines = list(withdraw_lines(withdrawn, now - timedelta(minutes=2)))
    lines += list(signup_confirm_lines(first_new, first_new + new, now - timedelta(minutes=30)))
    counts = intake(lines)
    return {
        "changed": changes,
        "withdrawn": withdraw,
        "new_confirmed": new,
        "lines": len(lines),
        "withdrawn_emails": [email(i) for i in withdrawn],
        "intake_outcomes": dict(counts),
    }
