"""Claiming work for several workers: cursors wait (FOR UPDATE), work sets skip (SKIP LOCKED),
missing rows are created race-free (ON CONFLICT DO NOTHING). The PostgreSQL tests hold one
transaction open and run the second in a thread; tests/test_scale_out.py does it with two
processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from sqlmodel import Session, select

from models.audit import AuditEvent, append, verify
from models.bookings import Booking, chats_due
from models.cursors import advance_cursor, get_cursor
from models.db import get_engine, transaction
from models.identity import pseudonym
from models.recipients import Recipient, live_recipients
from models.subjects import DataSubject

from pg import waiting_on_locks
from support import TEST_KEY

KEY = TEST_KEY.encode()
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_a_missing_cursor_starts_at_zero_and_only_moves_forward(settings):
    with transaction() as session:
        assert get_cursor(session, "x").position == 0
        advance_cursor(session, "x", 7)
    with transaction() as session:
        advance_cursor(session, "x", 5)
        assert get_cursor(session, "x").position == 7
    with transaction() as session:
        advance_cursor(session, "x", 9)  # not read before in this transaction
    with transaction() as session:
        assert get_cursor(session, "x").position == 9


def _in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    return thread, result


def _until_waiting_on_a_lock(url: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 10
    while not waiting_on_locks(url):
        assert thread.is_alive(), "the second transaction did not wait"
        assert time.monotonic() < deadline, "the second transaction never waited"
        time.sleep(0.01)


@pytest.mark.parametrize("exists", [True, False], ids=["cursor-exists", "both-create-it"])
def test_the_second_reader_of_a_cursor_waits_and_reads_where_the_first_left_it(pg, exists):
    if exists:
        with transaction(pg) as session:
            advance_cursor(session, "timify:bookings", 100)
    first = Session(get_engine(pg))
    try:
        advance_cursor(first, "timify:bookings", 500)
        first.flush()

        def second() -> int:
            with transaction(pg) as session:
                return get_cursor(session, "timify:bookings").position

        thread, read = _in_thread(second)
        _until_waiting_on_a_lock(pg, thread)
        first.commit()
    finally:
        first.close()
    thread.join(timeout=10)
    assert read == [500]


def test_two_first_appends_to_the_audit_trail_chain_up(pg):
    first = Session(get_engine(pg))
    try:
        append(first, KEY, [AuditEvent("check", "first")])
        thread, _ = _in_thread(lambda: _append_and_commit(pg))
        _until_waiting_on_a_lock(pg, thread)
        first.commit()
    finally:
        first.close()
    thread.join(timeout=10)
    with transaction(pg) as session:
        assert verify(session, KEY).ok and verify(session, KEY).checked == 2


def _append_and_commit(url: str) -> None:
    with transaction(url) as session:
        append(session, KEY, [AuditEvent("check", "second")])


def _subjects(session: Session, count: int) -> list[DataSubject]:
    rows = [
        DataSubject(pseudonym=pseudonym(KEY, "email", f"s{i}@example.de"), email=f"s{i}@example.de")
        for i in range(count)
    ]
    session.add_all(rows)
    session.flush()
    return rows


def _committed(url: str, load: Callable[[Session], list]) -> list:
    with transaction(url) as session:
        return load(session)


def test_workers_reading_due_chats_at_once_split_them_without_waiting(pg):
    with transaction(pg) as session:
        for seq, person in enumerate(_subjects(session, 4), start=1):
            session.add(
                Booking(
                    booking_ref=f"V-{seq}",
                    subject_id=person.id,
                    channel="video",
                    start_at=NOW,
                    duration_min=30,
                    seq=seq,
                    flexperto_customer_id=f"fx-{seq}",
                    chat_purge_due=date(2026, 6, 1),
                )
            )

    def due(session: Session, limit: int) -> list[str]:
        return [b.booking_ref for b in chats_due(session, date(2026, 6, 1), 0, limit)]

    first = Session(get_engine(pg))
    try:
        taken_first = due(first, 2)
        thread, taken_second = _in_thread(lambda: _committed(pg, lambda s: due(s, 10)))
        thread.join(timeout=10)
        assert not thread.is_alive(), "the second worker waited for the first (no SKIP LOCKED)"
    finally:
        first.close()
    assert taken_first == ["V-1", "V-2"] and taken_second == [["V-3", "V-4"]]


def test_workers_removing_receivers_at_once_split_the_register_rows(pg):
    with transaction(pg) as session:
        for person in _subjects(session, 3):
            session.add(
                Recipient(
                    subject_id=person.id,
                    processor="cleverreach",
                    purpose="consent:newsletter",
                    first_sent_at=NOW,
                    last_sent_at=NOW,
                )
            )
        session.flush()
        ids = sorted((r.id for r in session.exec(select(Recipient))), key=lambda i: i.int)

    def live(session: Session, among: list) -> list:
        rows = live_recipients(session, "cleverreach", "consent:newsletter", among)
        return [row.id for row in rows]

    first = Session(get_engine(pg))
    try:
        taken_first = live(first, ids[:1])
        thread, taken_second = _in_thread(lambda: _committed(pg, lambda s: live(s, ids)))
        thread.join(timeout=10)
        assert not thread.is_alive(), "the second worker waited for the first (no SKIP LOCKED)"
        with Session(get_engine(pg)) as other:  # the subjects joined in stay unlocked
            other.connection().exec_driver_sql("SELECT id FROM data_subject FOR UPDATE NOWAIT")
    finally:
        first.close()
    assert taken_first == ids[:1] and taken_second == [ids[1:]]
