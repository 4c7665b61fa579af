"""The same schema and job on PostgreSQL: a throwaway cluster on loopback, or
PSYNC_TEST_POSTGRES_URL when one is given. Skipped where no PostgreSQL server is installed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel, select

from models.audit import AuditEvent, append, verify
from models.consent import ConsentRecord
from models.db import get_engine, transaction
from models.intake import intake_lines
from models.migrate import upgrade
from psync.settings import get_settings
from support import TEST_KEY

KEY = TEST_KEY.encode()


def _run_as_postgres(cmd: list[str]) -> None:
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        cmd = ["su", "postgres", "-c", " ".join(cmd)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def postgres_url():
    given = os.environ.get("PSYNC_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("no PostgreSQL server installed (set PSYNC_TEST_POSTGRES_URL to use one)")
    data = tempfile.mkdtemp(prefix="psync-pg-")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _run_as_postgres(["initdb", "-D", data, "-A", "trust", "-U", "psync", "--no-sync"])
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run_as_postgres(["pg_ctl", "-D", data, "-o", f"'{options}'", "-w", "-l", f"{data}/log", "start"])
    try:
        yield f"postgresql+psycopg://psync@127.0.0.1:{port}/postgres"
    finally:
        _run_as_postgres(["pg_ctl", "-D", data, "-m", "immediate", "stop"])
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def pg(postgres_url, monkeypatch):
    monkeypatch.setenv("PSYNC_DATABASE_URL", postgres_url)
    monkeypatch.setenv("PSYNC_PSEUDONYM_KEY", TEST_KEY)
    get_settings.cache_clear()
    engine = get_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    upgrade(postgres_url)
    yield postgres_url
    get_settings.cache_clear()


def test_migrations_match_the_models_on_postgres(pg):
    with get_engine(pg).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []


def test_intake_audit_and_utc_round_trip_on_postgres(pg):
    at = datetime(2026, 3, 29, 3, 30, tzinfo=UTC) - timedelta(hours=2)  # around a DST switch
    line = (
        '{"type":"consent.signup","list":"service_offers","email":"Pg.Person@Example.de",'
        '"first_name":"P","last_name":"G","insurance_number":"A123456780","ip":"2001:db8::1",'
        f'"at":"{at.isoformat()}","source":"web","policy_version":"1"}}'
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
