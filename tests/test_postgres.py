"""The migrations and the audit chain on PostgreSQL, in every pass: the ``pg`` fixture
(conftest.py) is a migrated database on this process's throwaway cluster (tests/pg.py), or
on PSYNC_TEST_POSTGRES_URL. Skipped, naming what is missing, where none can be started."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel, select

from flows.intake import intake_lines
from models.audit import AuditEvent, append, verify
from models.consent import ConsentRecord
from models.db import get_engine, transaction

from support import TEST_KEY

KEY = TEST_KEY.encode()


def test_migrations_match_the_models_on_postgres(pg):
    with get_engine(pg).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []


def test_intake_audit_and_utc_round_trip_on_postgres(pg):
    at = datetime(2026, 3, 29, 3, 30, tzinfo=UTC) - timedelta(hours=2)  # around a DST switch
    line = (
        '{"type":"consent.signup","list":"service_offers","email":"Pg.Person@Example.de",'
        '"first_name":"P","last_name":"G","insurance_number":"A123456780","ip":"2001:db8::1",'
        f'"at":"{at.isoformat()}","source":"web","policy_version":"2026-01"}}'
    )
    with transaction(pg) as session:
        assert [r.outcome for r in intake_lines(session, KEY, [line], now=at)] == ["stored"]
    with transaction(pg) as session:
        assert [r.outcome for r in intake_lines(session, KEY, [line], now=at)] == ["duplicate"]
        record = session.exec(select(ConsentRecord)).one()
        assert record.signup_at == at and record.signup_at.utcoffset() == timedelta(0)
        append(session, KEY, [AuditEvent("check", "ok", detail="postgres")])
    with transaction(pg) as session:
        result = verify(session, KEY)
        assert result.ok and result.checked == 2


def _a_backend_waits_for_a_lock(url: str, seconds: float = 10) -> bool:
    """Whether a session of this database is seen waiting for a lock within `seconds`."""
    import threading
    import time

    from sqlalchemy import text

    deadline, pause = time.monotonic() + seconds, threading.Event()
    while time.monotonic() < deadline:
        with get_engine(url).connect() as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            if conn.execute(text(query)).scalar_one():
                return True
        pause.wait(0.01)
    return False


def test_an_erasure_waits_for_a_delivery_still_holding_its_cursor(pg):
    """A delivery's step 2 checks who is being erased once, then keeps calls in flight until
    its commit: the erasure's barrier (``await_deliveries``) must wait for it before anyone
    is asked, or the delivery's upsert could land after the processor's delete."""
    import threading

    from models.cursors import await_deliveries, get_cursor

    with transaction(pg) as session:
        get_cursor(session, "cleverreach:newsletter")
    holding, sent, passed = threading.Event(), threading.Event(), threading.Event()

    def delivery() -> None:
        with transaction(pg) as session:
            get_cursor(session, "cleverreach:newsletter")
            holding.set()
            sent.wait(10)  # its calls on the wire

    def erasure() -> None:
        assert await_deliveries(pg) == 1
        passed.set()

    threads = [threading.Thread(target=delivery), threading.Thread(target=erasure)]
    threads[0].start()
    assert holding.wait(10)
    threads[1].start()
    # The barrier's backend is seen waiting for the cursor's row lock: not merely slow.
    assert _a_backend_waits_for_a_lock(pg) and not passed.is_set()
    sent.set()  # the delivery commits
    assert passed.wait(10)
    for thread in threads:
        thread.join(10)
