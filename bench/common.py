"""What the job benchmarks share: their offline environment, the Prefect API, timing, results.

Imports nothing from prefect or the project at import time: ``job_environment`` (through
``bench.env``) must set the environment before the first ``import prefect``, so every helper
that needs either imports it inside.

Example::

    with job_environment() as (work, port), Sandbox(port, work / "sandbox.log") as sandbox:
        with prefect_api():
            run = timed_flow(push_bookings, records_per_task=500)
            runs = settled_task_runs(run["flow_run_id"])
        write_result("bookings", {...})
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from bench import env

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
# A Fernet key for the benchmarks' own synthetic documents (never a real one).
DOCUMENT_KEY = "bWFrZS1iZW5jaC1kb2N1bWVudHMtc2VjcmV0LTMyYj0="


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def git_commit() -> str | None:
    """The checkout's short commit, ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, cwd=ROOT
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=ROOT,
        ).stdout.strip()
    except OSError:
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "") if head.returncode == 0 else None


def environment() -> dict:
    """Where a result was measured; the load average shows what else ran on the machine."""
    import prefect

    return {
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "cpus": os.cpu_count(),
        "commit": git_commit(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


@contextmanager
def job_environment(keep: bool = False) -> Iterator[tuple[Path, int]]:
    """The offline environment of one job benchmark, every connector pointed at a sandbox on a
    free port; yields (temporary directory, port) and removes the directory afterwards."""
    port = env.free_port()
    work = env.prepare(250, port)
    from psync.sandbox_env import sandbox_environment

    os.environ.update(sandbox_environment(f"http://127.0.0.1:{port}", rate_per_second=env.RATE_PER_SECOND))
    os.environ.setdefault("PSYNC_DOCUMENT_KEY", DOCUMENT_KEY)
    try:
        yield work, port
    finally:
        if keep:
            log(f"temporary directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


@contextmanager
def prefect_api(held_client: bool = True) -> Iterator[str]:
    """A local Prefect API for the block (the test harness: a server subprocess on SQLite);
    yields its URL, for flows run in other processes.

    Flows run in this process within the block run as on the resident runner
    (``psync.runner``), the one place a process runs flow after flow: heartbeats off and,
    unless `held_client` is false (a run as ``psync run`` makes it in a process of its own),
    one Prefect client held for every run (``psync.runner.hold_prefect_client``)."""
    from contextlib import ExitStack

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    from psync.runner import hold_prefect_client

    with (
        prefect_test_harness(),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        ExitStack() as held,
    ):
        if held_client:
            hold_prefect_client(held)
        yield str(PREFECT_API_URL.value())


def timed_flow(flow, **params) -> dict:
    """Run a flow in this process; its wall time, result and run id. Raises unless completed."""
    started = time.perf_counter()
    state = flow(**params, return_state=True)
    seconds = time.perf_counter() - started
    if not state.is_completed():
        raise RuntimeError(f"{flow.name}: flow run ended {state.type.value}: {state.message}")
    return {"seconds": seconds, "counts": state.result(), "flow_run_id": state.state_details.flow_run_id}


def calls(state: dict, *processors: str) -> int:
    """Calls the sandbox counted at these processors (``GET /_sandbox/state``)."""
    return sum(sum(state[name]["calls"].values()) for name in processors)


@contextmanager
def cpu_of(meter, into: dict) -> Iterator[None]:
    """CPU seconds the block cost (``bench.procs.CpuMeter``: this process, the sandbox, any
    other child such as the Prefect server), stored in ``into["cpu_seconds"]``."""
    before = meter.sample()
    yield
    into["cpu_seconds"] = meter.delta(before, meter.sample())


def cpu_ratio(baseline: dict[str, float], ours: dict[str, float]) -> float:
    """Baseline CPU seconds / ours for the same items: the throughput ratio by CPU time, which
    other load on the machine changes far less than the wall-time one."""
    return round(sum(baseline.values()) / sum(ours.values()), 3)


def median_run(runs: list[dict], by: str = "seconds") -> dict:
    """The run whose figure `by` is the median (the upper of the two middle ones of an even
    count): a whole run, so the other figures reported with it were measured with it.

    >>> median_run([{"seconds": 3}, {"seconds": 1}, {"seconds": 2}])
    {'seconds': 2}
    """
    return sorted(runs, key=lambda run: run[by])[len(runs) // 2]


def per_item(value: float, items: int, digits: int = 4) -> float:
    return round(value / items, digits) if items else 0.0


def write_result(name: str, report: dict) -> Path:
    """``bench/results/<name>.json``, with when and where it was measured."""
    report.setdefault("at", datetime.now(UTC).isoformat(timespec="seconds"))
    report.setdefault("environment", environment())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
