"""``python -m bench.erasure [--queued 1000]``: the erasure fan-out, parallel vs sequential.

1. Two people at all five processors; the sandbox answers every call after 200 ms. One is
   erased by ``fan-out-erasure`` as deployed (one task per processor, in parallel), the
   other by the same flow with a one-thread task runner (one processor after the other).
   Reported: both wall times and their ratio (target: close to one processor's time).
2. ``--queued`` newsletter subscribers at CleverReach, one open request each, no latency:
   requests completed per second by ``follow-up-erasures``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import env

RESULTS = Path(__file__).resolve().parent / "results"
LATENCY_MS = 200


def _fan_out(sequential: bool, email: str) -> tuple[float, dict]:
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.erasure import fan_out_erasure, open_erasure_request
    from models.db import transaction

    with transaction() as session:
        request_id = open_erasure_request(session, email=email, channel="letter").id
    flow = fan_out_erasure.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1)) if sequential else fan_out_erasure
    started = time.perf_counter()
    try:
        counts = flow(request_id=request_id)
    except Exception as exc:  # reported, not hidden
        counts = {"failed": type(exc).__name__}
    return time.perf_counter() - started, counts


def _queued(n: int) -> dict:
    from sqlmodel import func, select

    from flows import newsletter
    from flows.erasure import follow_up_erasures, open_erasure_request
    from models.db import transaction
    from models.erasure import ErasureRequest
    from models.intake import intake_lines
    from models.types import utcnow
    from psync.settings import get_settings

    now = utcnow()
    at = (now - timedelta(hours=2)).isoformat()
    lines = []
    for i in range(n):
        email = f"queued.{i}@example.de"
        lines.append(json.dumps({"type": "consent.signup", "list": "newsletter", "email": email, "first_name": "Q",
                                 "last_name": f"Nr{i}", "ip": "192.0.2.1", "at": at, "source": "bench",
                                 "policy_version": "1"}))  # fmt: skip
        lines.append(json.dumps({"type": "consent.confirm", "list": "newsletter", "email": email, "ip": "192.0.2.2",
                                 "at": (now - timedelta(hours=1)).isoformat()}))  # fmt: skip
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
        with transaction() as session:
            open_left = session.exec(select(func.count()).where(ErasureRequest.status == "open")).one()
    seconds = time.perf_counter() - started
    return {"requests": n, "seconds": round(seconds, 2), "runs": runs, "still_open": open_left,
            "requests_per_second": round(n / seconds, 1), "last_counts": counts}  # fmt: skip


def run(queued: int) -> dict:
    import requests
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from bench.procs import Sandbox
    from models.migrate import upgrade
    from psync.demo_erasure import PEOPLE, seed_everywhere
    from psync.settings import get_settings

    work = Path(os.environ["PREFECT_HOME"]).parent
    with Sandbox(int(os.environ["BENCH_PORT"]), work / "sandbox.log") as sandbox, \
            prefect_test_harness(), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):  # fmt: skip
        upgrade()
        seed_everywhere(sandbox.url, get_settings().hmac_key(), work / "docs", PEOPLE[:2])
        requests.post(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": LATENCY_MS}, timeout=10).raise_for_status()
        parallel, parallel_counts = _fan_out(False, PEOPLE[0][0])
        sequential, sequential_counts = _fan_out(True, PEOPLE[1][0])
        requests.post(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": 0}, timeout=10).raise_for_status()
        queue = _queued(queued) if queued else None
    return {
        "latency_ms": LATENCY_MS,
        "fan_out": {"parallel_s": round(parallel, 2), "sequential_s": round(sequential, 2),
                    "ratio": round(parallel / sequential, 3),
                    "parallel_counts": parallel_counts, "sequential_counts": sequential_counts},
        "queued": queue,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.erasure", description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=1000)
    args = parser.parse_args(argv)
    port = env.free_port()
    env.prepare(250, port)
    from psync.sandbox_env import sandbox_environment

    os.environ.update(sandbox_environment(f"http://127.0.0.1:{port}", rate_per_second=env.RATE_PER_SECOND))
    os.environ["BENCH_PORT"] = str(port)
    os.environ.setdefault("PSYNC_DOCUMENT_KEY", "bWFrZS1iZW5jaC1kb2N1bWVudHMtc2VjcmV0LTMyYj0=")
    report = run(args.queued)
    report["at"] = datetime.now(UTC).isoformat()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "erasure.json").write_text(json.dumps(report, indent=2, default=str))
    f = report["fan_out"]
    print(f"erasing one subject at 5 processors, {LATENCY_MS} ms per answer: parallel {f['parallel_s']} s, "
          f"sequential {f['sequential_s']} s, ratio {f['ratio']}")  # fmt: skip
    if report["queued"]:
        q = report["queued"]
        print(f"{q['requests']} queued requests (CleverReach): {q['seconds']} s in {q['runs']} follow-up run(s), "
              f"{q['requests_per_second']} requests/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
