"""``python -m bench.overhead``: the fixed cost of one ``psync run`` (issue 19, target 4).

``psync run push-bookings`` with nothing to do (an empty database: no call, no task run),
each in a process of its own as a user or cron starts it, ``--runs`` times:

- against a running Prefect server (``PREFECT_API_URL`` set: the test harness's server);
- on the temporary server Prefect starts when no API is set (its start included);
- against the running server once more with Prefect's flow-run heartbeats on, as
  ``psync run`` had them before (what turning them off saves).

Where the time goes, measured apart: the interpreter with ``import prefect`` alone, the
interpreter with the flow's modules imported (what every run pays before the flow starts),
and the flow run itself in a process that has imported everything (the part Prefect's
engine and our flow add per run). Reported: wall and CPU seconds (the child's user + system
time), median of the runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

from bench.common import ROOT, job_environment, log, write_result

TARGET_SECONDS = 1.0  # with a running server
FLOW = "push-bookings"


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], env: dict[str, str]) -> dict:
    cpu, started = _child_cpu(), time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds, cpu = time.perf_counter() - started, _child_cpu() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return {"seconds": seconds, "cpu_seconds": cpu}


def _median(samples: list[dict]) -> dict:
    return {
        "seconds": round(statistics.median(s["seconds"] for s in samples), 2),
        "cpu_seconds": round(statistics.median(s["cpu_seconds"] for s in samples), 2),
        "samples_s": [round(s["seconds"], 2) for s in samples],
    }


def _series(command: list[str], env: dict[str, str], runs: int) -> dict:
    return _median([_timed(command, env) for _ in range(runs)])


def run(runs: int, keep: bool) -> dict:
    from bench.common import prefect_api
    from bench.procs import psync_command

    with job_environment(keep):
        from models.migrate import upgrade

        upgrade()
        base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        base.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)
        psync = psync_command("run", FLOW)
        python = [sys.executable, "-c"]
        result: dict = {"flow": FLOW, "runs": runs}
        with prefect_api() as url:
            server = {**base, "PREFECT_API_URL": url}
            log(f"psync run {FLOW}, nothing to do, against a running server ({runs}×)")
            _timed(psync, server)  # the server's first flow and its first run: not counted
            result["running_server"] = _series(psync, server, runs)
            log("the same with flow-run heartbeats on")
            result["running_server_heartbeats_on"] = _series(
                psync, {**server, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "180"}, runs
            )
            log("where the time goes: imports, the flow run in a warm process")
            result["import_prefect"] = _series([*python, "import prefect"], server, runs)
            result["import_flow"] = _series(
                [*python, f"from flows.registry import get_flow; get_flow({FLOW!r})"], server, runs
            )
            result["flow_run_in_process"] = _flow_in_process(runs)
        log(f"psync run {FLOW} on a temporary server ({runs}×)")
        # On a loaded machine the temporary server can take longer than Prefect's default
        # 20 s to answer, and the run then fails: allowed more here, since its time is measured.
        temporary = {**base, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
        result["temporary_server"] = _series(psync, temporary, runs)
    result["target_s"] = TARGET_SECONDS
    return result


def _flow_in_process(runs: int) -> dict:
    """The flow called in this process (everything imported, one call made before), as
    ``psync run`` calls it: the engine's and the flow's own cost per run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.registry import get_flow

    flow = get_flow(FLOW)
    samples = []
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        flow()
        for _ in range(runs):
            cpu, started = time.process_time(), time.perf_counter()
            flow()
            samples.append({"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu})
    return _median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.runs, args.keep)
    path = write_result("overhead", report)
    for key in (
        "running_server",
        "running_server_heartbeats_on",
        "temporary_server",
        "import_prefect",
        "import_flow",
        "flow_run_in_process",
    ):
        print(f"{key:<30} {report[key]['seconds']:>6.2f} s wall {report[key]['cpu_seconds']:>6.2f} s CPU")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
