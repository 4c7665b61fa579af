"""SQLite on disk (issue 16): secure_delete on every connection, the WAL emptied on demand
and when a process ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from models.db import get_engine, scrub_journal, transaction

pytestmark = pytest.mark.sqlite_only("SQLite's files")

WRITE = """
from sqlalchemy import text
from models.db import transaction
with transaction() as session:
    session.execute(text("CREATE TABLE t (v TEXT)"))
    session.execute(text("INSERT INTO t VALUES ('geheim@example.de')"))
"""


def test_every_connection_has_secure_delete_on(settings):
    with get_engine().connect() as connection:
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_scrub_journal_empties_the_wal_and_leaves_no_deleted_value_in_the_files(settings):
    path = Path(settings.database_url.split("///", 1)[1])
    wal = Path(f"{path}-wal")
    with transaction() as session:
        session.execute(text("CREATE TABLE t (v TEXT)"))
        session.execute(text("INSERT INTO t VALUES ('geheim@example.de'), ('bleibt@example.de')"))
    with transaction() as session:
        session.execute(text("DELETE FROM t WHERE v = 'geheim@example.de'"))
    assert b"geheim@example.de" in path.read_bytes() + wal.read_bytes()  # the WAL keeps the old page
    assert scrub_journal() is True
    assert wal.stat().st_size == 0
    blob = path.read_bytes() + wal.read_bytes()
    assert b"geheim@example.de" not in blob and b"bleibt@example.de" in blob


def test_a_process_that_ends_closes_its_connections_and_the_wal_goes(tmp_path):
    database = tmp_path / "psync.db"
    env = {**os.environ, "PSYNC_DATABASE_URL": f"sqlite:///{database}"}
    subprocess.run([sys.executable, "-c", WRITE], env=env, check=True, cwd=Path(__file__).parents[2], timeout=60)
    # The last connection to close checkpoints the WAL into the file and deletes it.
    assert database.exists() and not Path(f"{database}-wal").exists()
    assert b"geheim@example.de" in database.read_bytes()


def test_a_transaction_with_a_wider_cache_gives_its_connection_back_with_the_default(settings):
    engine = get_engine()
    engine.dispose()  # one pooled connection from here on, so the next transaction gets it
    with engine.connect() as connection:
        default = connection.exec_driver_sql("PRAGMA cache_size").scalar()
    with transaction(cache_mb=64) as session:
        assert session.connection().exec_driver_sql("PRAGMA cache_size").scalar() == -64 * 1024
        session.execute(text("CREATE TABLE t (v TEXT)"))
    with pytest.raises(RuntimeError), transaction(cache_mb=64) as session:
        session.execute(text("INSERT INTO t VALUES ('x')"))
        raise RuntimeError("rolled back")
    with transaction() as session:
        assert session.connection().exec_driver_sql("PRAGMA cache_size").scalar() == default
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 0
