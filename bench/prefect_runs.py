"""Task runs of one flow run, read back from the Prefect API."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import Counter

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

PAGE = 200  # the server's default (and usual maximum) page size


def read_task_runs(flow_run_id: uuid.UUID) -> list:
    runs: list = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])),
                limit=PAGE,
                offset=len(runs),
            )
            runs.extend(page)
            if len(page) < PAGE:
                return runs


def settled_task_runs(flow_run_id: uuid.UUID, timeout: float = 120.0, quiet: float = 3.0) -> dict:
    """Task runs reach the API as events, after the flow returned: poll until they settle.

    Settled = every run in a final state and the count unchanged for `quiet` seconds.
    """
    deadline = time.monotonic() + timeout
    last, stable_since = -1, time.monotonic()
    while True:
        runs = read_task_runs(flow_run_id)
        final = all(r.state is not None and r.state.is_final() for r in runs)
        if len(runs) != last or not final:
            last, stable_since = len(runs), time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    by_name = Counter(r.name.rsplit("-", 1)[0] if r.name else "?" for r in runs)
    states = Counter(r.state.type.value if r.state else "none" for r in runs)
    return {"total": len(runs), "by_task": dict(by_name), "states": dict(states)}


@task(cache_policy=NO_CACHE)
def _noop(x: int) -> int:
    return x


@flow(name="bench-warmup")
def warmup_flow() -> int:
    """Pays the one-off costs (API client, event workers, first flow/task registration)."""
    return _noop(1)


class ApiRetries(logging.Filter):
    """Counts the Prefect client's retried API calls (e.g. 503 while the harness's SQLite is busy).

    The client logs each retry at DEBUG on ``prefect.client`` and then sleeps. This filter sits
    on that logger: it lets DEBUG records through to be counted, then drops everything below
    the logger's previous level, so nothing new is printed.
    """

    _WAIT = re.compile(r"made in ([0-9.]+)s")

    def __init__(self) -> None:
        super().__init__()
        self.logger = logging.getLogger("prefect.client")
        self.floor = self.logger.getEffectiveLevel()
        self.count, self.seconds = 0, 0.0

    def install(self) -> ApiRetries:
        self.logger.addFilter(self)
        self.logger.setLevel(logging.DEBUG)
        return self

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Another attempt will be made" in message:
            self.count += 1
            found = self._WAIT.search(message)
            self.seconds += float(found.group(1)) if found else 0.0
        return record.levelno >= self.floor

    def sample(self) -> tuple[int, float]:
        return self.count, self.seconds
