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
