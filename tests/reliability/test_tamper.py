"""Tamper evidence (issue 7): every way of changing the audit trail behind its back is found,
and ``verify`` names the first row that no longer fits.

The trail is some two hundred real rows: intake decisions (``intake_lines``) and flow-like
batches (``append``, several runs and times, rows with and without processor, subject,
numbers, and awkward details). Each tampering is a plain SQL change in a transaction that is
rolled back after ``verify`` has looked at it, so one trail serves them all; the ones checked
through ``psync audit verify`` are committed and the trail restored afterwards.

What ``verify`` must name is worked out independently of it: the first position where the
table differs from the honest one (the smaller of the id found there and the position, so a
row forged below id 1 is named by its own id), rows missing at the end named by the first
missing position; with every row intact, a head that claims fewer rows than there are names
the first row it does not cover, any other change of the head the position after the last
row. A "tampering" that leaves the table as it was (swapping two rows of identical content)
must verify.

Tampered: every column of the first, second, middle, last-but-one and last row and one
column (in turn) of every other row; every single row deleted, the last rows deleted, a row
deleted and the gap closed (with and without mending the next row's ``prev_hash``); forged
rows inserted at every kind of position (with a guessed key, as a replayed copy, below id 1,
after a gap); rows swapped by id, by content, by time, and blocks reversed; the head's every
column changed, deleted, moved back with a valid seal (an old head put back); truncation with
the head rewritten to match. Not detectable by design, so not tried: anything done with the
key, and truncating the trail together with putting back an old head sealed for that length
(the seal is only as fresh as the database it is stored in).

The flip side, on PostgreSQL: an intact trail verifies whatever the session's time zone.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from itertools import product, zip_longest

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update
from sqlmodel import Session
from typer.testing import CliRunner

from flows.intake import intake_lines
from models.audit import (
    FIELDS,
    GENESIS,
    AuditEntry,
    AuditEvent,
    AuditHead,
    Verification,
    _digest,
    _seal,
    append,
    export_rows,
    verify,
)
from models.db import get_engine, transaction
from models.types import utcnow
from psync.cli import app

from reliability.figures import record

ENTRY = AuditEntry.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
HEAD = AuditHead.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
COLUMNS = [*FIELDS, "prev_hash", "hash"]  # every column of audit_entry
SETTINGS = hypothesis_settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def figures():
    yield
    record("tamperings tried", TALLY["tried"])
    record("tamperings detected", TALLY["detected"])
    record("tamperings via psync audit verify", TALLY["cli"])


# the trail ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trail:
    key: bytes
    rows: list[dict]  # the honest rows, in id order, every column
    head: dict

    @cached_property
    def table(self) -> list[tuple]:
        """The honest rows as `_read` returns them."""
        return [tuple(row.values()) for row in self.rows]

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def positions(self) -> list[int]:
        """First, second, middle, last-but-one, last."""
        return sorted({1, 2, self.n // 2, self.n - 1, self.n})


def _intake_lines(now) -> list[str]:
    at = (now - timedelta(hours=2)).isoformat()
    lines = []
    for i in range(30):
        email = f"person{i}@example.de"
        lines.append(
            json.dumps(
                {
                    "type": "consent.signup",
                    "list": "newsletter",
                    "email": email,
                    "first_name": "Erika",
                    "last_name": f"Muster{i}",
                    "ip": f"192.0.2.{i + 1}",
                    "at": at,
                    "source": "https://example.de/nl",
                    "policy_version": "2026-01",
                }
            )
        )
        if i % 4:
            lines.append(
                json.dumps(
                    {
                        "type": "consent.confirm",
                        "list": "newsletter",
                        "email": email,
                        "ip": "192.0.2.200",
                        "at": (now - timedelta(hours=1)).isoformat(),
                    }
                )
            )
    lines.append(
        json.dumps({"type": "erasure.request", "insurance_number": "Z987654321", "channel": "portal", "at": at})
    )  # rejected (nobody has the number): an audit row all the same
    return lines


def _batch(b: int) -> list[AuditEvent]:
    """What a flow run writes: calls, decisions per subject, and odd rows."""
    request = uuid.UUID(int=b + 1)
    return [
        AuditEvent("call.oauth.token", "ok", "cleverreach", attempts=1, http_status=200),
        AuditEvent("call.receivers.upsert", "ok", "cleverreach", attempts=2, http_status=200, detail="items=20"),
        *(
            AuditEvent("consent.push", "sent", "cleverreach", f"{b:04x}{i:028x}", detail="list=newsletter")
            for i in range(20)
        ),
        AuditEvent(
            "erasure.erase",
            "verified",
            "timify",
            f"{b:032x}",
            http_status=404,
            detail=f"request={request} purpose=booking",
        ),
        AuditEvent(
            "isic.purge_documents",
            "verified",
            subject=f"{b + 1:032x}",
            detail='order=ISIC-0001 "Nachweis" ü ß € \\ back',
        ),
        AuditEvent("erasure.deadline", "on_time"),  # every optional column empty
        AuditEvent("call.cards.request", "fatal", "isic", attempts=0, http_status=0, detail=""),
    ]


def _read(session: Session, as_dicts: bool = False) -> tuple[list, dict | None]:
    """audit_entry (as tuples in column order, or dicts) and audit_head, as they are now."""
    result = session.execute(select(ENTRY).order_by(ENTRY.c.id))
    rows = [dict(r._mapping) for r in result] if as_dicts else [tuple(r) for r in result]
    head = session.execute(select(HEAD).where(HEAD.c.id == 1)).first()
    return rows, dict(head._mapping) if head is not None else None


@pytest.fixture
def trail(settings) -> Trail:
    key = settings.hmac_key()
    now = utcnow()
    with transaction() as session:
        results = intake_lines(session, key, _intake_lines(now), now=now)
    assert {r.outcome for r in results} == {"stored", "rejected"}
    for b in range(6):
        with transaction() as session:
            append(
                session,
                key,
                _batch(b),
                flow_run_id=f"run-{b}" if b % 3 else None,
                now=now + timedelta(minutes=b, microseconds=b),
            )
    with transaction() as session:
        rows, head = _read(session, as_dicts=True)
        assert verify(session, key) == Verification(True, len(rows))
    assert head is not None and 180 <= len(rows) <= 300
    return Trail(key, rows, head)


# the expectation, worked out without verify ---------------------------------------------------
ID = list(ENTRY.c.keys()).index("id")


def first_bad(trail: Trail, rows: list[tuple], head: dict | None) -> int | None:
    """The row `verify` must name for this state of the tables; None when nothing changed."""
    for position, (now, then) in enumerate(zip_longest(rows, trail.table), start=1):
        if now != then:
            return position if now is None else min(now[ID], position)
    if head == trail.head:
        return None
    claimed = head["last_id"] if head is not None else 0
    return max(claimed, 0) + 1 if claimed < trail.n else trail.n + 1


Tamper = Callable[[Session], object]


def attempt(trail: Trail, tamper: Tamper) -> tuple[Verification, int | None]:
    """Tamper, verify, roll back: (what verify said, what it must name)."""
    with Session(get_engine()) as session:
        tamper(session)
        result = verify(session, trail.key, chunk=97)  # chunks that do not divide the trail
        expected = first_bad(trail, *_read(session))
        session.rollback()
    return result, expected


def check(trail: Trail, tamper: Tamper, what: str) -> tuple[int | None, Verification]:
    result, expected = attempt(trail, tamper)
    if expected is None:  # the change changed nothing: the trail must still verify
        assert result == Verification(True, trail.n), what
        return expected, result
    TALLY["tried"] += 1
    assert (result.ok, result.bad_id, result.checked) == (False, expected, max(expected - 1, 0)), (what, result)
    TALLY["detected"] += 1
    return expected, result


# the tamperings -----------------------------------------------------------------------------
def set_row(row_id: int, **values) -> Tamper:
    return lambda session: session.execute(update(ENTRY).where(ENTRY.c.id == row_id).values(**values))


def set_head(**values) -> Tamper:
    return lambda session: session.execute(update(HEAD).where(HEAD.c.id == 1).values(**values))


def delete_rows(*condition) -> Tamper:
    return lambda session: session.execute(delete(ENTRY).where(*condition))


def shift(session: Session, first: int, by: int) -> None:
    """Renumber the rows from id `first` on by `by`, through a range nobody uses (ids are
    unique at every step, on both databases)."""
    session.execute(update(ENTRY).where(ENTRY.c.id >= first).values(id=-ENTRY.c.id - 10_000_000))
    session.execute(update(ENTRY).where(ENTRY.c.id <= -10_000_000).values(id=-ENTRY.c.id - 10_000_000 + by))


def _flip(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


def altered(trail: Trail, column: str, row: dict):
    """The smallest change a forger would make to the value."""
    value = row[column]
    if column == "id":
        return trail.n + 1000 + value
    if column == "at":
        return value + timedelta(microseconds=1)
    if isinstance(value, int):
        return value + 1
    if value is None:
        return 0 if column in ("attempts", "http_status") else "x"
    return _flip(value) if value else " "


REASON = {"id": "row missing", "prev_hash": "chain broken before this row"}


def test_altering_any_column_of_any_row_is_named(trail):
    cases = [(k, column) for k in trail.positions for column in COLUMNS]
    # Every other row: one column each, in turn, so every column is met all along the trail.
    cases += [(k, COLUMNS[k % len(COLUMNS)]) for k in range(1, trail.n + 1) if k not in trail.positions]
    for k, column in cases:
        value = altered(trail, column, trail.rows[k - 1])
        named, result = check(trail, set_row(k, **{column: value}), f"row {k} {column}")
        assert named == k
        assert result.reason == REASON.get(column, "row content altered"), (k, column, result)


def test_deleting_any_row_is_named(trail):
    for k in range(1, trail.n + 1):
        named, result = check(trail, delete_rows(ENTRY.c.id == k), f"delete row {k}")
        assert named == k
        assert result.reason == ("rows removed from the end" if k == trail.n else "row missing")
    for count in (1, 2, 3, 10, trail.n // 2, trail.n - 1, trail.n):
        keep = trail.n - count
        named, result = check(trail, delete_rows(ENTRY.c.id > keep), f"delete the last {count}")
        assert (named, result.reason, result.checked) == (keep + 1, "rows removed from the end", keep)


@SETTINGS
@given(data=st.data())
def test_deleting_a_row_and_closing_the_gap_is_named(trail, data):
    k = data.draw(st.integers(1, trail.n - 1), label="row")
    mend = data.draw(st.booleans(), label="mend prev_hash")

    def tamper(session):
        session.execute(delete(ENTRY).where(ENTRY.c.id == k))
        shift(session, k + 1, -1)
        if mend:  # a careful forger also points the next row at the one before the gap
            previous = trail.rows[k - 2]["hash"] if k > 1 else GENESIS
            session.execute(update(ENTRY).where(ENTRY.c.id == k).values(prev_hash=previous))

    named, result = check(trail, tamper, f"delete {k}, close the gap, mend={mend}")
    assert named == k
    assert result.reason == ("row content altered" if mend else "chain broken before this row")


def forged(trail: Trail, k: int, like: int, key: bytes = b"a guessed key") -> dict:
    """A plausible row for id `k`: row `like`'s content with a changed detail, chained to row
    k-1 and hashed with a key that is not ours."""
    row = {**trail.rows[like - 1], "id": k, "detail": "list=forged"}
    row["prev_hash"] = trail.rows[k - 2]["hash"] if 1 < k <= trail.n + 1 else GENESIS
    row["hash"] = _digest(key, row["prev_hash"], row)
    return row


def inserted(trail: Trail, row: dict) -> Tamper:
    def tamper(session):
        if 1 <= row["id"] <= trail.n:
            shift(session, row["id"], 1)
        session.execute(insert(ENTRY).values(**row))

    return tamper


@SETTINGS
@given(data=st.data())
def test_inserting_a_forged_row_is_named(trail, data):
    k = data.draw(st.integers(1, trail.n + 1), label="at")
    like = data.draw(st.integers(1, trail.n), label="copied from")
    kind = data.draw(st.sampled_from(["guessed key", "replayed copy", "replayed head"]), label="kind")
    if kind == "guessed key":
        row = forged(trail, k, like)
    elif kind == "replayed copy":  # an honest row again, under a new id
        row = {**trail.rows[like - 1], "id": k}
    else:  # the row that would come next, hashed with the key but its content altered after
        row = {**forged(trail, k, like, trail.key), "outcome": "forged"}
    named, _ = check(trail, inserted(trail, row), f"insert at {k} ({kind}, like {like})")
    # A copy of row k put before it is row k itself: the first bad row is the one pushed on.
    assert named == (k + 1 if k <= trail.n and row == trail.rows[k - 1] else k)


def test_forged_rows_at_the_edges_are_named(trail):
    n = trail.n
    cases = {
        **{f"insert at {k}": forged(trail, k, min(k, n)) for k in (1, 2, n // 2, n, n + 1)},
        "a row below id 1 (id 0)": forged(trail, 0, 1),
        "a row with a negative id": {**forged(trail, 0, n), "id": -7},
        "a row after a gap": forged(trail, n + 5, n),
        "row 1 again, as id 0": {**trail.rows[0], "id": 0},
    }
    for what, row in cases.items():
        named, _ = check(trail, inserted(trail, row), what)
        assert named == (row["id"] if row["id"] < 1 else min(row["id"], n + 1)), what


def swapped(trail: Trail, i: int, j: int, columns: list[str]) -> Tamper:
    def tamper(session):
        a, b = trail.rows[i - 1], trail.rows[j - 1]
        if "id" in columns:
            session.execute(update(ENTRY).where(ENTRY.c.id == i).values(id=-1))
            session.execute(update(ENTRY).where(ENTRY.c.id == j).values(id=i))
            session.execute(update(ENTRY).where(ENTRY.c.id == -1).values(id=j))
            return
        session.execute(update(ENTRY).where(ENTRY.c.id == i).values(**{c: b[c] for c in columns}))
        session.execute(update(ENTRY).where(ENTRY.c.id == j).values(**{c: a[c] for c in columns}))

    return tamper


SWAPS = {
    "ids": ["id"],
    "content": [c for c in COLUMNS if c not in ("id", "prev_hash", "hash")],
    "everything but the id": [c for c in COLUMNS if c != "id"],
    "times": ["at"],
    "subjects": ["subject_pseudonym"],
    "hashes": ["prev_hash", "hash"],
}


@SETTINGS
@given(data=st.data())
def test_swapping_two_rows_is_named(trail, data):
    i, j = sorted(data.draw(st.lists(st.integers(1, trail.n), min_size=2, max_size=2, unique=True), label="rows"))
    how = data.draw(st.sampled_from(sorted(SWAPS)), label="swap")
    named, _ = check(trail, swapped(trail, i, j, SWAPS[how]), f"swap {how} of rows {i} and {j}")
    assert named in (None, i)  # None: both rows were alike in what was swapped


def test_swapping_at_the_edges_and_reversing_blocks_is_named(trail):
    n = trail.n
    for (i, j), how in product([(1, 2), (1, n), (n // 2, n // 2 + 1), (n - 1, n)], SWAPS):
        check(trail, swapped(trail, i, j, SWAPS[how]), f"swap {how} of rows {i} and {j}")
    for first, last in [(1, n), (1, 3), (n // 2, n // 2 + 7), (n - 2, n)]:

        def reverse(session, first=first, last=last):
            for k in range(first, last + 1):  # the block's rows, in reverse order, same ids
                other = trail.rows[first + last - k - 1]
                values = {c: other[c] for c in COLUMNS if c != "id"}
                session.execute(update(ENTRY).where(ENTRY.c.id == k).values(**values))

        named, _ = check(trail, reverse, f"reverse rows {first}..{last}")
        assert named == first


def test_altering_the_head_is_detected(trail):
    n, last = trail.n, trail.rows[-1]
    before = trail.rows[-2]

    def put_back(k: int) -> Tamper:  # an old head, sealed with our key: a backup put back
        row = trail.rows[k - 1] if k else {"hash": GENESIS}
        return set_head(last_id=k, last_hash=row["hash"], seal=_seal(trail.key, k, row["hash"]))

    cases = {
        "last_id + 1": (set_head(last_id=n + 1), n + 1),
        "last_id - 1": (set_head(last_id=n - 1), n),
        "last_id 0": (set_head(last_id=0), 1),
        "last_id negative": (set_head(last_id=-3), 1),
        "last_hash altered": (set_head(last_hash=_flip(last["hash"])), n + 1),
        "last_hash of the row before": (set_head(last_hash=before["hash"]), n + 1),
        "last_hash genesis": (set_head(last_hash=GENESIS), n + 1),
        "seal altered": (set_head(seal=_flip(trail.head["seal"])), n + 1),
        "seal empty": (set_head(seal=""), n + 1),
        "seal made with another key": (set_head(seal=_seal(b"a guessed key", n, last["hash"])), n + 1),
        "moved back one row, resealed with another key": (
            set_head(last_id=n - 1, last_hash=before["hash"], seal=_seal(b"a guessed key", n - 1, before["hash"])),
            n,
        ),
        "head deleted": (lambda session: session.execute(delete(HEAD)), 1),
        "head row renumbered": (lambda session: session.execute(update(HEAD).values(id=2)), 1),
        **{f"an old head put back (row {k})": (put_back(k), k + 1) for k in (0, 1, n // 2, n - 1)},
    }
    for what, (tamper, expected) in cases.items():
        named, _ = check(trail, tamper, what)
        assert named == expected, what


def test_truncating_and_rewriting_the_head_without_the_key_is_detected(trail):
    for keep in (0, 1, trail.n // 2, trail.n - 1):
        row = trail.rows[keep - 1] if keep else {"hash": GENESIS}

        def tamper(session, keep=keep, row=row):
            session.execute(delete(ENTRY).where(ENTRY.c.id > keep))
            session.execute(
                update(HEAD).values(
                    last_id=keep, last_hash=row["hash"], seal=_seal(b"a guessed key", keep, row["hash"])
                )
            )

        named, result = check(trail, tamper, f"truncate to {keep}, head rewritten")
        assert (named, result.reason) == (keep + 1, "rows removed from the end")


def restore(trail: Trail) -> None:
    with transaction() as session:
        session.execute(delete(ENTRY))
        session.execute(delete(HEAD))
        session.execute(insert(ENTRY), trail.rows)
        session.execute(insert(HEAD), [trail.head])


def test_psync_audit_verify_exits_non_zero_and_names_the_row(trail):
    runner, n = CliRunner(), trail.n
    middle = trail.rows[n // 2 - 1]
    cases = {
        "a detail altered": set_row(n // 2, detail=_flip(middle["detail"] or "x")),
        "the first row's time altered": set_row(1, at=trail.rows[0]["at"] + timedelta(seconds=1)),
        "a middle row deleted": delete_rows(ENTRY.c.id == n // 2),
        "the last row deleted": delete_rows(ENTRY.c.id == n),
        "a row forged at the end": inserted(trail, forged(trail, n + 1, n)),
        "a row forged below id 1": inserted(trail, forged(trail, 0, 1)),
        "two rows swapped": swapped(trail, 3, 4, ["id"]),
        "the head moved back": set_head(last_id=n - 1),
        "the head's seal altered": set_head(seal=_flip(trail.head["seal"])),
    }
    for what, tamper in cases.items():
        with transaction() as session:
            tamper(session)
            expected = first_bad(trail, *_read(session))
        result = runner.invoke(app, ["audit", "verify"])
        assert result.exit_code == 1, (what, result.output)
        assert f"BROKEN at row {expected}:" in result.stderr, (what, result.stderr)
        TALLY["cli"] += 1
        restore(trail)
    result = runner.invoke(app, ["audit", "verify"])
    assert (result.exit_code, result.stdout.strip()) == (0, f"audit trail intact: {n} rows")


@pytest.mark.postgres_only
def test_an_intact_trail_verifies_in_any_session_time_zone(trail):
    # PostgreSQL returns timestamptz in the session's zone (a German server's default is
    # Europe/Berlin); the chain was hashed over UTC, so verify must not raise a false alarm.
    from sqlalchemy import text

    for zone in ("Europe/Berlin", "America/St_Johns", "UTC"):
        with Session(get_engine()) as session:
            session.execute(text(f"SET TIME ZONE '{zone}'"))
            assert verify(session, trail.key) == Verification(True, trail.n), zone
            exported = list(export_rows(session))
        assert all(row["at"].endswith("+00:00") for row in exported), zone
