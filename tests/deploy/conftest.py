"""The local stack of the end-to-end deployment tests: the one `make up` starts
(psync.stack), up once per test module on free loopback ports, each with its own Prefect
home, Prefect database and project database, and torn down at the module's end.

A module says how its stack differs by overriding the module-scoped ``stack_env`` fixture
(environment for the server, the worker and the steps). By default the Prefect server's
scheduler is off, so only the runs a test creates run (tests/deploy/test_deployments.py);
tests/deploy/test_scheduler.py turns it on.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest

from psync.stack import Stack

from pg import ON_POSTGRES
from support import TEST_KEY

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """What this module's stack sets on top of the common environment (override per module)."""
    return {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory, stack_env):
    """The local stack, up once for this module, and the environment its worker sees."""
    folder = tmp_path_factory.mktemp("stack")
    if ON_POSTGRES:
        database = request.getfixturevalue("postgres").create_schema()
    else:
        database = f"sqlite:///{folder / 'psync.db'}"
    extra = {
        "PSYNC_DATABASE_URL": database,
        "PSYNC_PSEUDONYM_KEY": TEST_KEY,
        "PSYNC_DOCUMENT_KEY": base64.urlsafe_b64encode(b"k" * 32).decode(),
        "PSYNC_HTTP_MAX_ATTEMPTS": "2",  # the failure case fails in seconds
        "PSYNC_RIGHTS_OUTBOX": str(folder / "rights-outbox"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        **stack_env,
    }
    stack = Stack(ROOT, folder / "state", api_port=free_port(), sandbox_port=free_port(), extra_env=extra)
    stack.up()
    try:
        yield stack
    finally:
        stack.down()
