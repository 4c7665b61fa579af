"""Shared fixtures: offline Prefect in a temporary home, a fresh database per test, one
sandbox server and one Prefect test harness per session."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

# Before anything imports prefect: a private home, no telemetry, nothing leaves the machine.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="psync-test-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402
import requests  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

import models  # noqa: E402, F401
from models.db import get_engine  # noqa: E402
from psync.sandbox_env import sandbox_environment  # noqa: E402
from psync.settings import get_settings  # noqa: E402

from support import TEST_KEY  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sandbox_server():
    """The sandbox app served over real HTTP on loopback, once per session."""
    import uvicorn

    from sandbox.app import create_app

    port = _free_port()
    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("sandbox did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def sandbox(sandbox_server):
    """The sandbox URL, emptied and without faults."""
    requests.post(f"{sandbox_server}/_sandbox/reset", json={"fault_rate": 0.0}, timeout=5)
    return sandbox_server


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Settings for one test: a fresh SQLite database and a fixed pseudonym key."""
    url = f"sqlite:///{tmp_path}/psync.db"
    monkeypatch.setenv("PSYNC_DATABASE_URL", url)
    monkeypatch.setenv("PSYNC_PSEUDONYM_KEY", TEST_KEY)
    # The sandbox's ids and credentials, at a host that does not resolve: a test that
    # calls out without asking for the sandbox (or `responses`) fails instead of leaking.
    for name, value in sandbox_environment("http://sandbox.invalid").items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    # Tables straight from the models (fast); tests/models/test_migrations.py checks that
    # the Alembic migrations produce exactly these.
    SQLModel.metadata.create_all(get_engine(url))
    yield get_settings()
    get_engine(url).dispose()
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
    """Retry waits recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr("connectors.transport.pause", slept.append)
    return slept
