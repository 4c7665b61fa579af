"""``python -m bench.overhead``: the fixed cost of one ``psync run`` (issue 19, target 4).

``psync run push-bookings`` with nothing to do (an empty database: no call, no task run),
each in a process of its own as a user or cron starts it, ``--runs`` times:

- against the resident runner (``psync runner``, which ``psync up`` starts: psync/runner.py)
  on that server: the run in the runner's process, this process only asking for it;
- against a running Prefect server (``PREFECT_API_URL`` set: the test harness's server),
  the run in the ``psync run`` process (no runner);
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
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
        # No resident runner unless asked for (one `make up` left running here is not used).
        base["PSYNC_RUNNER_SOCKET"] = ""
        psync = psync_command("run", FLOW)
        python = [sys.executable, "-c"]
        result: dict = {"flow": FLOW, "runs": runs}
        # No client held in this process: its flow runs (``_flow_in_process``) stand for a
        # `psync run` in a process of its own, which makes one.
        with prefect_api(held_client=False) as url:
            server = {**base, "PREFECT_API_URL": url}
            with _resident_runner(server) as (resident, runner_log):
                log(f"psync run {FLOW}, nothing to do, on the resident runner ({runs}×)")
                _timed(psync, resident)  # the runner's first run: not counted, as below
                result["resident_runner"] = _series(psync, resident, runs)
                said = runner_log.read_text()
                taken = said.count(f"runner: psync run {FLOW}")
                if taken != runs + 1:  # else some run went its own way: not this row's figure
                    raise RuntimeError(f"the runner took {taken} of {runs + 1} runs; see {runner_log}")
                # The runner's own seconds per run (the flow run), as its log says them.
                inside = [float(m) for m in re.findall(r"runner: exit 0 after ([0-9.]+) s", said)][1:]
                result["resident_runner"]["runner_side_s"] = inside
                result["resident_runner"]["runner_side_median_s"] = round(statistics.median(inside), 2)
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


@contextmanager
def _resident_runner(env: dict[str, str]) -> Iterator[tuple[dict[str, str], Path]]:
    """``psync runner`` as ``psync up`` starts it, against the same server and database;
    yields the environment of a ``psync run`` that asks it, and the runner's log."""
    from psync.runner import ping

    with tempfile.TemporaryDirectory(prefix="psync-runner-") as folder:
        sock = Path(folder) / "runner.sock"
        with (Path(folder) / "runner.log").open("ab") as out:
            runner = subprocess.Popen(
                [sys.executable, "-m", "psync.cli", "runner", "--socket", str(sock)],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 120
            while ping(sock) is None:
                if runner.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"psync runner did not start: {(Path(folder) / 'runner.log').read_text()}")
                time.sleep(0.2)
            yield {**env, "PSYNC_RUNNER_SOCKET": str(sock)}, Path(folder) / "runner.log"
        finally:
            runner.terminate()
            runner.wait(timeout=60)


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
        "resident_runner",
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
