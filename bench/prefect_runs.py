"""Task runs of one flow run, read back from the Prefect API."""

from __future__ import annotations

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
                limit=PAGE, offset=len(runs),
            )  # fmt: skip
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
