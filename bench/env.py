"""The offline environment of a benchmark run. Imports nothing from prefect or the project.

Everything that reads the environment (Prefect's settings, ``core.settings``) must come after
``prepare``; ``bench.__main__`` imports the rest of the benchmark only then.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

CLIENT_ID = "psync-sandbox"
CLIENT_SECRET = "sandbox-secret"
GROUP_NEWSLETTER = "1001"
GROUP_SERVICE_OFFERS = "1002"
PSEUDONYM_KEY = "bench-pseudonym-key"
# The client-side token bucket's rate, for the sync and the baseline alike. High enough that
# it is never what limits either of them: the sandbox answers a few thousand small calls per
# second at most, and the incremental sync's 500 DELETEs at 1,000/s would have taken 0.5 s
# by the limiter alone (the real CleverReach limit is far lower). Reported.
RATE_PER_SECOND = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(batch_size: int, port: int, workdir: Path | None = None) -> Path:
    """Set the offline Prefect and PSYNC_* environment; returns the run's temporary directory."""
    work = workdir or Path(tempfile.mkdtemp(prefix="psync-bench-"))
    prefect_home = work / "prefect-home"
    prefect_home.mkdir(parents=True, exist_ok=True)
    # Nothing leaves the machine: private Prefect home, no telemetry, no remote API.
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
        os.environ.pop(name, None)
    os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"

    os.environ["PSYNC_DATABASE_URL"] = f"sqlite:///{work / 'psync.db'}"
    os.environ["PSYNC_PSEUDONYM_KEY"] = PSEUDONYM_KEY
    os.environ["PSYNC_CLEVERREACH_BASE_URL"] = f"http://127.0.0.1:{port}/cleverreach"
    os.environ["PSYNC_CLEVERREACH_CLIENT_ID"] = CLIENT_ID
    os.environ["PSYNC_CLEVERREACH_CLIENT_SECRET"] = CLIENT_SECRET
    os.environ["PSYNC_CLEVERREACH_GROUP_NEWSLETTER"] = GROUP_NEWSLETTER
    os.environ["PSYNC_CLEVERREACH_GROUP_SERVICE_OFFERS"] = GROUP_SERVICE_OFFERS
    os.environ["PSYNC_CLEVERREACH_BATCH_SIZE"] = str(batch_size)
    os.environ["PSYNC_CLEVERREACH_RATE_PER_SECOND"] = str(RATE_PER_SECOND)
    return work
