"""Shared fixtures: offline Prefect in a temporary home, a fresh database per test, one
sandbox server and one Prefect test harness per session.

The database is SQLite, or with PSYNC_TEST_DATABASE=postgres a new schema per test on a
throwaway PostgreSQL started once per test process (tests/pg.py). Markers: ``sqlite_only``
(skipped on PostgreSQL, with its reason), ``postgres_only`` (runs only on PostgreSQL), and
``database``, set here on every test that uses a database (``-m database`` selects them).
"""

from __future__ import annotations

import os
import tempfile

# Before anything imports prefect: a private home, no telemetry, nothing leaves the machine.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="psync-test-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest
import requests
from sqlmodel import SQLModel

import models  # noqa: F401 - registers every table
from core.settings import get_settings
from models.consent_text import register_shipped
from models.db import get_engine, transaction
from models.migrate import upgrade
from psync.sandbox_env import sandbox_environment

import pg as pgtest  # tests/pg.py (`pg` is a fixture)
from support import TEST_KEY, served

# The reliability suite's figures table, printed once at the end of any run that recorded some.
pytest_plugins = ["reliability.figures"]

if pgtest.TEST_DATABASE not in ("sqlite", "postgres"):
    raise pytest.UsageError(f"PSYNC_TEST_DATABASE is sqlite or postgres, not {pgtest.TEST_DATABASE!r}")
ON_POSTGRES = pgtest.ON_POSTGRES
# A test that asks for one of these (itself or through another fixture) uses a database.
DATABASE_FIXTURES = {"empty_database", "pg", "postgres"}


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if DATABASE_FIXTURES & set(item.fixturenames):
            item.add_marker("database")


def pytest_runtest_setup(item):
    sqlite_only = item.get_closest_marker("sqlite_only")
    if sqlite_only and ON_POSTGRES:
        pytest.skip(f"SQLite only: {sqlite_only.args[0] if sqlite_only.args else 'no reason given'}")
    if item.get_closest_marker("postgres_only") and not ON_POSTGRES:
        pytest.skip("runs in the PostgreSQL pass (PSYNC_TEST_DATABASE=postgres)")


@pytest.fixture(scope="session")
def sandbox_server():
    """The sandbox app served over real HTTP on loopback, once per session."""
    from sandbox.app import create_app

    with served(create_app(), "sandbox") as url:
        yield url


@pytest.fixture
def sandbox(sandbox_server):
    """The sandbox URL, emptied and without faults."""
    # Generous: on a loaded 2-core machine the server thread shares its process's
    # interpreter with the test's Prefect server (CI saw a 5 s read time out there).
    requests.post(f"{sandbox_server}/_sandbox/reset", json={"fault_rate": 0.0}, timeout=30).raise_for_status()
    return sandbox_server


@pytest.fixture(scope="session")
def postgres():
    """This test process's PostgreSQL (a ``tests/pg.py`` Cluster), started on first use.

    Skips, naming what is missing, where none can be started (no server binaries, no driver).
    """
    reason = pgtest.unavailable()
    if reason:
        pytest.skip(reason)
    with pgtest.cluster() as server:
        yield server


@pytest.fixture
def empty_database(request, tmp_path):
    """The URL of a new, empty database: a SQLite file, or a schema on PostgreSQL."""
    if ON_POSTGRES:
        server = request.getfixturevalue("postgres")
        url = server.create_schema()
    else:
        url = f"sqlite:///{tmp_path}/psync.db"
    yield url
    get_engine(url).dispose()
    if ON_POSTGRES:
        server.drop_schema(url)


@pytest.fixture
def database_url(empty_database):
    """A fresh database holding every table, and the consent texts shipped with psync.

    Tables straight from the models (fast); the migrations are checked against them in
    tests/models/test_migrations.py and tests/test_postgres.py.
    """
    SQLModel.metadata.create_all(get_engine(empty_database))
    with transaction(empty_database) as session:  # as `psync db upgrade` does
        register_shipped(session)
    return empty_database


@pytest.fixture
def settings(database_url, monkeypatch, tmp_path):
    """Settings for one test: a fresh database and a fixed pseudonym key."""
    monkeypatch.setenv("PSYNC_DATABASE_URL", database_url)
    # The test's own call journals (flows/journal.py), for the processes it starts too.
    monkeypatch.setenv("PSYNC_CALL_JOURNAL_DIR", str(tmp_path / "calls"))
    # What rights requests hand to the person (flows/rights.py), never under the checkout.
    monkeypatch.setenv("PSYNC_RIGHTS_OUTBOX", str(tmp_path / "outbox"))
    monkeypatch.setenv("PSYNC_PSEUDONYM_KEY", TEST_KEY)
    # The sandbox's ids and credentials, at a host that does not resolve: a test that
    # calls out without asking for the sandbox (or `responses`) fails instead of leaking.
    for name, value in sandbox_environment("http://sandbox.invalid").items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def pg(postgres, monkeypatch):
    """A new PostgreSQL schema brought up by the Alembic migrations, set as the configured
    database, whatever PSYNC_TEST_DATABASE says."""
    url = postgres.create_schema()
    monkeypatch.setenv("PSYNC_DATABASE_URL", url)
    monkeypatch.setenv("PSYNC_PSEUDONYM_KEY", TEST_KEY)
    get_settings.cache_clear()
    upgrade(url)
    yield url
    get_engine(url).dispose()
    postgres.drop_schema(url)
    get_settings.cache_clear()


@pytest.fixture
def against_sandbox(settings, sandbox, monkeypatch):
    """Settings pointing every connector at the live sandbox."""
    for name, value in sandbox_environment(sandbox).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return sandbox


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture
def no_sleep(monkeypatch):
    """Retry waits recorded instead of slept; a rate limiter's waits skipped, not recorded
    (the per-processor buckets live as long as the test process)."""
    slept: list[float] = []
    monkeypatch.setattr("connectors.transport.pause", slept.append)
    monkeypatch.setattr("connectors.transport.throttle", lambda seconds: None)
    return slept
