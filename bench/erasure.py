"""``python -m bench.erasure [--queued 1000]``: the erasure fan-out, parallel vs sequential.

1. Two people at all five processors; the sandbox answers every call after 200 ms. One is
   erased by ``fan-out-erasure`` as deployed (one task per processor, in parallel), the
   other by the same flow with a one-thread task runner (one processor after the other).
   Reported: both wall times and their ratio, the calls each processor answered, and the
   parallel time against its floor, the slowest processor's calls one after the other
   (target: close to one processor's time).
2. ``--queued`` newsletter subscribers at CleverReach, one open request each, no latency:
   requests completed per second by ``follow-up-erasures``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta

from bench.common import job_environment, log, write_result

LATENCY_MS = 200
PROCESSORS = ("cleverreach", "timify", "flexperto", "isic", "nect")


def _fan_out(sandbox, sequential: bool, email: str) -> dict:
    """Erase one person at every processor; wall time, counts and the calls each processor got."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.erasure import fan_out_erasure, open_erasure_request
    from models.db import transaction

    with transaction() as session:
        request_id = open_erasure_request(session, email=email, channel="letter").id
    flow = (
        fan_out_erasure.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1)) if sequential else fan_out_erasure
    )
    before = sandbox.state()
    started = time.perf_counter()
    state = flow(request_id=request_id, return_state=True)
    seconds = time.perf_counter() - started
    after = sandbox.state()
    return {
        "seconds": seconds,
        # A failure is reported, not hidden.
        "counts": state.result() if state.is_completed() else {"failed": state.message},
        "calls": {p: sum(after[p]["calls"].values()) - sum(before[p]["calls"].values()) for p in PROCESSORS},
        "flow_run_id": state.state_details.flow_run_id,
    }


def _queued(n: int) -> dict:
    from sqlmodel import func, select

    from core.settings import get_settings
    from flows import newsletter
    from flows.erasure import confirm_manual, follow_up_erasures, open_erasure_request
    from flows.intake import intake_lines
    from models.db import transaction
    from models.erasure import ErasureRequest, ErasureTask
    from models.types import utcnow

    now = utcnow()
    at = (now - timedelta(hours=2)).isoformat()
    lines = []
    for i in range(n):
        email = f"queued.{i}@example.de"
        lines.append(
            json.dumps(
                {
                    "type": "consent.signup",
                    "list": "newsletter",
                    "email": email,
                    "first_name": "Q",
                    "last_name": f"Nr{i}",
                    "ip": "192.0.2.1",
                    "at": at,
                    "source": "bench",
                    "policy_version": "2026-01",
                }
            )
        )
        lines.append(
            json.dumps(
                {
                    "type": "consent.confirm",
                    "list": "newsletter",
                    "email": email,
                    "ip": "192.0.2.2",
                    "at": (now - timedelta(hours=1)).isoformat(),
                }
            )
        )
    with transaction() as session:
        intake_lines(session, get_settings().hmac_key(), lines, now=now)
    newsletter.sync_newsletter_consents()
    with transaction() as session:
        for i in range(n):
            open_erasure_request(session, email=f"queued.{i}@example.de", channel="portal")
    started, runs, counts, open_left = time.perf_counter(), 0, {}, n
    while open_left and runs < 5:  # bounded: a stuck request is reported, not waited for
        runs += 1
        counts = follow_up_erasures()
        # USU (no API, a recipient beside CleverReach's newsletter): confirmed as the officer
        # would, inside the timing (each confirmation finishes its request).
        with transaction() as session:
            manual = [t.id for t in session.exec(select(ErasureTask).where(ErasureTask.state == "manual_pending"))]
        for task_id in manual:
            with transaction() as session:
                confirm_manual(session, task_id, "Bestätigung per E-Mail", utcnow())
        with transaction() as session:
            open_left = session.exec(select(func.count()).where(ErasureRequest.status == "open")).one()
    seconds = time.perf_counter() - started
    return {
        "requests": n,
        "seconds": round(seconds, 2),
        "runs": runs,
        "still_open": open_left,
        "requests_per_second": round(n / seconds, 1),
        "last_counts": counts,
    }


def run(queued: int, keep: bool = False) -> dict:
    import requests

    from bench.common import prefect_api
    from bench.prefect_runs import settled_task_runs
    from bench.procs import Sandbox
    from core.settings import get_settings
    from models.migrate import upgrade
    from psync.demo_erasure import PEOPLE, seed_everywhere

    with job_environment(keep) as (work, port), Sandbox(port, work / "sandbox.log") as sandbox, prefect_api():
        upgrade()
        log("two people at all five processors")
        seed_everywhere(sandbox.url, get_settings().hmac_key(), work / "docs", PEOPLE[:2])
        requests.post(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": LATENCY_MS}, timeout=10).raise_for_status()
        log(f"fan-out, parallel and on one thread, {LATENCY_MS} ms per answer")
        parallel = _fan_out(sandbox, False, PEOPLE[0][0])
        sequential = _fan_out(sandbox, True, PEOPLE[1][0])
        task_runs = settled_task_runs(parallel["flow_run_id"])
        requests.post(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": 0}, timeout=10).raise_for_status()
        log(f"{queued} queued requests, one follow-up-erasures run")
        queue = _queued(queued) if queued else None
    slowest = max(parallel["calls"], key=parallel["calls"].get)
    floor = parallel["calls"][slowest] * LATENCY_MS / 1000
    return {
        "latency_ms": LATENCY_MS,
        "fan_out": {
            "parallel_s": round(parallel["seconds"], 2),
            "sequential_s": round(sequential["seconds"], 2),
            "ratio": round(parallel["seconds"] / sequential["seconds"], 3),
            "calls_by_processor": parallel["calls"],
            "calls": sum(parallel["calls"].values()),
            "slowest_processor": slowest,
            "slowest_processor_floor_s": floor,
            "parallel_over_floor": round(parallel["seconds"] / floor, 2),
            "task_runs": task_runs,
            "parallel_counts": parallel["counts"],
            "sequential_counts": sequential["counts"],
        },
        "queued": queue,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.erasure", description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = parser.parse_args(argv)
    report = run(args.queued, args.keep)
    path = write_result("erasure", report)
    f = report["fan_out"]
    print(
        f"erasing one subject at 5 processors, {LATENCY_MS} ms per answer: parallel {f['parallel_s']} s, "
        f"sequential {f['sequential_s']} s, ratio {f['ratio']}; slowest processor {f['slowest_processor']} "
        f"({f['calls_by_processor'][f['slowest_processor']]} calls = {f['slowest_processor_floor_s']} s floor)"
    )
    if report["queued"]:
        q = report["queued"]
        print(
            f"{q['requests']} queued requests (CleverReach): {q['seconds']} s in {q['runs']} follow-up run(s), "
            f"{q['requests_per_second']} requests/s"
        )
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
