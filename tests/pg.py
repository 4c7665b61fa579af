"""A throwaway PostgreSQL for the tests: one cluster per test process, a schema per test.

The cluster is started from the installed server binaries (``initdb`` on PATH, else the
newest ``/usr/lib/postgresql/*/bin``), as user ``postgres`` when the tests run as root (the
server refuses root), listening on a Unix socket only, durability off. With
PSYNC_TEST_POSTGRES_URL set, that server is used instead (its user needs CREATEDB).

``unavailable()`` names what is missing where no server can be started; the fixtures in
conftest.py skip with that reason.

Example::

    with cluster() as server:
        url = server.create_schema()  # postgresql+psycopg://…?options=-csearch_path%3Dtest_1
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from models.db import get_engine

GIVEN_URL = "PSYNC_TEST_POSTGRES_URL"
# Which database the tests' `settings` use: sqlite (default) or postgres.
TEST_DATABASE = os.environ.get("PSYNC_TEST_DATABASE", "sqlite")
ON_POSTGRES = TEST_DATABASE == "postgres"


@cache
def binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if os.access(f"{folder}/initdb", os.X_OK) and os.access(f"{folder}/pg_ctl", os.X_OK):
            return Path(folder)
    return None


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def unavailable() -> str | None:
    """Why no PostgreSQL can be had here, or None when it can."""
    if importlib.util.find_spec("psycopg") is None:
        return "the PostgreSQL driver is missing: pip install -e .[postgres] (psycopg)"
    if os.environ.get(GIVEN_URL):
        return None
    if binaries() is None:
        return (
            "no PostgreSQL server installed: initdb/pg_ctl neither on PATH nor under "
            f"/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql; or set {GIVEN_URL})"
        )
    if os.geteuid() == 0 and not _has_user("postgres"):
        return "running as root and there is no 'postgres' user to run the server as"
    return None


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class Cluster:
    """A PostgreSQL server with a database of our own for this test process.

    Each test gets a schema in it (``create_schema``): creating one and its tables takes
    ~60 ms here, copying a template database 150-450 ms.
    """

    def __init__(self, admin_url: str):
        self.admin_url = make_url(admin_url)
        self.database = f"psync_test_{os.getpid()}"
        self._names = itertools.count(1)
        with _autocommit(self.admin_url) as admin:
            admin.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            admin.exec_driver_sql(f'CREATE DATABASE "{self.database}"')
        self._base = self.admin_url.set(database=self.database)
        self._engine = create_engine(self._base, isolation_level="AUTOCOMMIT", pool_size=1)

    def create_schema(self) -> str:
        """A new empty schema; returns the URL whose connections work in it (search_path)."""
        name = f"test_{next(self._names)}"
        with self._engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        return self._base.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(hide_password=False)

    def drop_schema(self, url: str) -> None:
        """Drop the schema of `url` and everything in it.

        A connection a test left open in a transaction would make this wait: it fails after
        10 s instead, naming the leak.
        """
        name = make_url(url).query["options"].removeprefix("-csearch_path=")
        with self._engine.connect() as connection:
            connection.exec_driver_sql("SET lock_timeout = '10s'")
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def close(self) -> None:
        self._engine.dispose()
        with _autocommit(self.admin_url) as admin:
            admin.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


@contextmanager
def _autocommit(url) -> Iterator:
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def waiting_on_locks(url: str) -> int:
    """How many connections to the database of `url` wait for a lock now.

    A new transaction per call: PostgreSQL keeps one snapshot of pg_stat_activity for the
    whole transaction that first reads it, so polling inside one would never see a change.
    """
    with get_engine(url).connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()


@contextmanager
def cluster() -> Iterator[Cluster]:
    """The server to test against: PSYNC_TEST_POSTGRES_URL, or a throwaway one started here.

    Raises RuntimeError when ``unavailable()`` names a reason or the server does not start.
    """
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    given = os.environ.get(GIVEN_URL)
    if given:
        server = Cluster(given)
        try:
            yield server
        finally:
            server.close()
        return
    with _throwaway() as admin_url:
        server = Cluster(admin_url)
        try:
            yield server
        finally:
            server.close()


@contextmanager
def _throwaway() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="psync-pg-"))
    data, socket_dir = root / "data", root / "sock"
    data.mkdir()
    socket_dir.mkdir()
    if os.geteuid() == 0:
        for path in (root, data, socket_dir):
            shutil.chown(path, "postgres", "postgres")
    bin_dir = binaries()
    assert bin_dir is not None
    _as_server_user(
        [bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "psync", "-E", "UTF8", "--locale=C", "--no-sync"],
        cwd=root,
    )
    # No TCP port (nothing to collide with between test processes); durability off: the
    # cluster lives as long as the test run.
    options = f"-c listen_addresses='' -k {socket_dir} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    _as_server_user(
        [bin_dir / "pg_ctl", "-D", data, "-o", options, "-w", "-t", "60", "-l", root / "server.log", "start"], cwd=root
    )
    try:
        yield f"postgresql+psycopg://psync@/postgres?host={socket_dir}"
    finally:
        _as_server_user([bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def _as_server_user(cmd: list, cwd: Path) -> None:
    # PostgreSQL refuses to run as root: run its programs as the postgres user then.
    who = {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
    try:
        subprocess.run(list(map(str, cmd)), check=True, capture_output=True, timeout=120, cwd=cwd, **who)
    except subprocess.CalledProcessError as exc:
        log = Path(cwd, "server.log")
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(
            f"{Path(cmd[0]).name} failed ({exc.returncode}): {exc.stderr.decode(errors='replace')[-2000:]}{tail}"
        ) from None
