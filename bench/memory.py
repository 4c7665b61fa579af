"""``python -m bench.memory [--subscribers 1000000]``: peak memory of a full newsletter sync.

N confirmed subscriptions are written straight to the database (``bench.direct_seed``: the
rows intake writes, checked against intake on 1,000 of them first), then ``psync run
sync-newsletter-consents`` runs in a process of its own against a local Prefect API and the
sandbox, each in its own process too. The figure is that one process's peak resident memory
(``ru_maxrss``), target under 250 MB: the sync meets it only by streaming, a task reading
its ``records_per_task`` records and never the whole list. Also reported: the sandbox's
peak (it holds every receiver), the sync's time, and that every receiver arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from sqlmodel import col

from bench.common import job_environment, log, per_item, write_result

TARGET_MB = 250  # issue 19 ("still under 250 MB"); issue 2 had asked for 500
PAGE = 5000  # the sandbox's largest page of receivers


def count_receivers(url: str, group: str, kind: str = "active") -> int:
    """How many receivers of `kind` a sandbox group holds, read through its paged API.

    Gallops to the first empty page and halves back: a few pages for a million receivers,
    where ``/_sandbox/state`` would render every one of them.
    """
    import requests

    from psync.sandbox_env import CREDENTIAL_ID, CREDENTIAL_SECRET

    root = f"{url}/cleverreach"
    with requests.Session() as session:
        token = session.post(
            f"{root}/oauth/token.php",
            auth=(CREDENTIAL_ID, CREDENTIAL_SECRET),
            json={"grant_type": "client_credentials"},
            timeout=30,
        )
        token.raise_for_status()
        session.headers["Authorization"] = "Bearer " + token.json()["access_token"]

        def size(page: int) -> int:
            response = session.get(
                f"{root}/v3/groups.json/{group}/receivers",
                params={"type": kind, "page": page, "pagesize": PAGE},
                timeout=120,
            )
            response.raise_for_status()
            return len(response.json())

        if size(0) == 0:
            return 0
        full, empty = 0, 1  # a non-empty page, and a candidate for the first empty one
        while size(empty):
            full, empty = empty, empty * 2
        while empty - full > 1:
            middle = (full + empty) // 2
            full, empty = (middle, empty) if size(middle) else (full, middle)
        return full * PAGE + size(full)


def _live_register_rows(processor: str) -> int:
    """Live register rows of one processor (CleverReach's, and USU's written with them)."""
    from sqlmodel import func, select

    from models.db import transaction
    from models.recipients import Recipient

    with transaction() as session:
        return session.exec(
            select(func.count()).where(Recipient.processor == processor, col(Recipient.removed_at).is_(None))
        ).one()


def _the_flow_run_task_runs() -> dict:
    """Task runs of the one flow run this Prefect API has seen (the sync's, from the child)."""
    from prefect.client.orchestration import get_client

    from bench.prefect_runs import settled_task_runs

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=10)
    if len(runs) != 1:
        return {"total": None, "note": f"{len(runs)} flow runs at the API, expected 1"}
    return settled_task_runs(runs[0].id)


def _quarters(samples: list[tuple[float, float]]) -> list[float]:
    """Resident MB at a quarter, half, three quarters of the run and at its last sample."""
    if not samples:
        return []
    end = samples[-1][0]
    return [next(mb for t, mb in samples if t >= end * q) for q in (0.25, 0.5, 0.75, 1.0)]


def run(n: int, batch_size: int, slice_subjects: int, keep: bool) -> dict:
    from bench import direct_seed
    from bench.common import prefect_api
    from bench.env import GROUP_NEWSLETTER
    from bench.procs import Sandbox, psync_command, run_measured, tree_rss_mb
    from models.db import get_engine
    from models.migrate import upgrade

    with job_environment(keep) as (work, port), Sandbox(port, work / "sandbox.log") as sandbox:
        upgrade()
        log("check: 1,000 subscriptions seeded through intake and directly must give the same rows")
        check = direct_seed.compare_with_intake(work / "compare")
        log(f"seeding {n:,} confirmed subscriptions directly")
        started = time.perf_counter()
        direct_seed.seed_direct(n, slice_subjects)
        seed_seconds = time.perf_counter() - started
        get_engine().dispose()  # the sync's process is the only one at the database now
        database_mb = sum(f.stat().st_size for f in work.glob("psync.db*")) / 2**20
        sandbox_before = tree_rss_mb(sandbox.pid)

        with prefect_api() as api_url:
            log(f"full sync of {n:,} in its own process (Prefect API {api_url})")
            command = psync_command(
                "run", "sync-newsletter-consents", "-p", 'lists=["newsletter"]', "-p", f"batch_size={batch_size}"
            )
            measured = run_measured(
                command,
                {**os.environ, "PREFECT_API_URL": api_url},
                work / "sync.out",
                watch={"sandbox": sandbox.pid},
            )
            if measured["returncode"] != 0:
                tail = (work / "sync.stderr").read_text(errors="replace").splitlines()[-30:]
                raise RuntimeError(f"the sync exited {measured['returncode']}:\n" + "\n".join(tail))
            task_runs = _the_flow_run_task_runs()
        out = (work / "sync.out").read_text().splitlines()
        counts = json.loads(next(line for line in reversed(out) if line.startswith("{")))
        log("counting what arrived")
        at_sandbox = count_receivers(sandbox.url, GROUP_NEWSLETTER)
        register, co_recipient = _live_register_rows("cleverreach"), _live_register_rows("usu")
        sandbox_after = tree_rss_mb(sandbox.pid)

    if counts.get("pushed") != n or at_sandbox != n or register != n or co_recipient != n:
        raise RuntimeError(
            f"pushed {counts}, {at_sandbox} active at the sandbox, {register} CleverReach and {co_recipient} USU"
            f" rows in the register; expected {n}"
        )
    samples = [s for s in measured.pop("samples") if s[1] > 0]  # not the launcher's last moments alone
    peak = measured["max_rss_mb"]
    return {
        "subscribers": n,
        "batch_size": batch_size,
        "check_against_intake": check,
        "seed": {
            "way": "direct (bench.direct_seed)",
            "seconds": round(seed_seconds, 1),
            "subjects_per_second": round(n / seed_seconds),
            "database_mb": round(database_mb),
        },
        "sync": {
            **measured,
            "seconds": round(measured["seconds"], 2),
            "receivers_per_second": round(n / measured["seconds"]),
            "counts": counts,
            "task_runs": task_runs,
            "task_runs_per_receiver": per_item(task_runs["total"] or 0, n, 6),
            "rss_mb_at_quarters": _quarters(samples),
            "rss_samples_per_second": samples[::10],  # polled every 0.1 s
            "command": " ".join(command[1:]),
        },
        "sandbox": {
            "rss_mb_before": round(sandbox_before),
            "peak_rss_mb": measured["watched_peak_rss_mb"]["sandbox"],
            "rss_mb_after": round(sandbox_after),
            "active_receivers": at_sandbox,
        },
        "register_live_rows": register,
        "register_live_rows_usu": co_recipient,
        "peak_rss_mb": peak,
        "target_mb": TARGET_MB,
        "result": "PASS" if peak < TARGET_MB else "MISS",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000, help="confirmed subscriptions (default 1000000)")
    parser.add_argument("--batch-size", type=int, default=250, help="receivers per upsert call (default 250)")
    parser.add_argument("--slice", type=int, default=100_000, help="subjects per seeding transaction (default 100000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = parser.parse_args(argv)
    if args.subscribers < 1:
        parser.error("--subscribers must be positive")
    try:
        report = run(args.subscribers, args.batch_size, args.slice, args.keep)
    except Exception:  # noqa: BLE001 - any failure is printed and becomes the exit code
        traceback.print_exc()
        return 1
    path = write_result("memory", report)
    s = report["sync"]
    print(
        f"full sync of {report['subscribers']:,} subscribers in its own process: peak RSS {report['peak_rss_mb']} MB "
        f"(target < {TARGET_MB} MB: {report['result']}); {s['seconds']} s, {s['receivers_per_second']:,} receivers/s; "
        f"RSS at 1/4, 1/2, 3/4, end: {s['rss_mb_at_quarters']} MB; sandbox peak {report['sandbox']['peak_rss_mb']} MB"
    )
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
