"""The benchmark run: seed, baseline, full sync, 1% change, incremental sync, report.

Imported only after ``bench.env.prepare`` has set the environment (it imports prefect).
"""

from __future__ import annotations

import cProfile
import inspect
import io
import json
import math
import pstats
import sqlite3
import statistics
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from bench import baseline, profiling, seed
from bench.common import environment, median_run, prefect_api
from bench.common import log as _log
from bench.env import GROUP_NEWSLETTER, RATE_PER_SECOND
from bench.prefect_runs import ApiRetries, settled_task_runs, warmup_flow
from bench.procs import CpuMeter, Sandbox
from flows.newsletter import sync_newsletter_consents
from intake.lines import CHUNK
from models.db import checkpoint, get_engine
from models.migrate import upgrade

RESULTS = Path(__file__).resolve().parent / "results"

TARGET_THROUGHPUT_RATIO = 0.8  # ours / baseline receivers per second, at least (issue 14)
# The baseline and the full sync each run this often, in turns; the medians count.
SYNC_ROUNDS = 3
TARGET_INCREMENTAL_RATIO = 0.05  # incremental / full sync time, below
TARGET_TASKS_PER_BATCH = 1.0  # Prefect task runs per batch of the full sync, at most
# The incremental sync is timed this often, each time after another 1% change, and judged by
# the median: a quarter of a second is within reach of the Prefect API's and the machine's
# hiccups (in timelines of seven rounds, one or two took 0.25-0.3 s where the others took
# 0.2 s), which one full sync of several seconds averages out. Five rounds: the median
# stands two such hiccups.
INCREMENTAL_ROUNDS = 5


def sandbox_group(sandbox: Sandbox, group: str) -> dict:
    """Receivers of a group at the sandbox, and the calls it counted."""
    state = sandbox.state()["cleverreach"]
    receivers = state["groups"][group]["receivers"]
    return {
        "receivers": len(receivers),
        "active": sum(1 for r in receivers.values() if r.get("active")),
        "emails": set(receivers),
        "calls": state["calls"],
    }


class Profiler:
    """cProfile around one phase when asked (--profile); a no-op otherwise."""

    def __init__(self, enabled: bool, name: str):
        self.enabled, self.name = enabled, name
        self.profile = cProfile.Profile() if enabled else None
        self.path: Path | None = None

    def __enter__(self):
        if self.profile:
            self.profile.enable()
        return self

    def __exit__(self, *exc):
        if not self.profile:
            return
        self.profile.disable()
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.path = RESULTS / f"{self.name}.prof"
        self.profile.dump_stats(self.path)
        out = io.StringIO()
        stats = pstats.Stats(self.profile, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        (RESULTS / f"{self.name}.txt").write_text(out.getvalue())
        _log(f"profile of {self.name}: {self.path} (summary {self.name}.txt)")


def flow_parameters(batch_size: int, records_per_task: int | None) -> dict:
    """What the flow is called with; records_per_task only if the flow has it and it was given."""
    params: dict = {"lists": ["newsletter"], "batch_size": batch_size}
    accepted = inspect.signature(sync_newsletter_consents.fn).parameters
    if records_per_task is not None:
        if "records_per_task" not in accepted:
            raise RuntimeError("--records-per-task: the flow has no such parameter")
        params["records_per_task"] = records_per_task
    return params


def effective_parameters(params: dict) -> dict:
    """The parameters including the flow's own defaults (for the report)."""
    signature = inspect.signature(sync_newsletter_consents.fn)
    defaults = {k: p.default for k, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **params}


def timed_sync(params: dict, meter: CpuMeter, retries: ApiRetries, profile: bool, name: str) -> dict:
    cpu_before, retries_before = meter.sample(), retries.sample()
    started = time.perf_counter()
    with Profiler(profile, name):
        state = sync_newsletter_consents(**params, return_state=True)
    seconds = time.perf_counter() - started
    cpu = CpuMeter.delta(cpu_before, meter.sample())
    count, slept = (a - b for a, b in zip(retries.sample(), retries_before, strict=True))
    if not state.is_completed():
        raise RuntimeError(f"{name}: flow run ended {state.type.value}: {state.message}")
    return {
        "seconds": seconds,
        "counts": state.result(),
        "flow_run_id": state.state_details.flow_run_id,
        "cpu_seconds": cpu,
        # The local Prefect API (test harness, SQLite) sometimes answers 503 while it persists
        # events; its client then sleeps ~2 s and retries. Not product time, but in the wall time.
        "prefect_api_retries": {"count": count, "sleep_seconds": round(slept, 2)},
    }


def settle_api(runs: int, timeout: float = 30.0) -> None:
    """Wait until the API has recorded the warm-up runs' tasks (its event backlog is done)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if len(client.read_task_runs(limit=200)) >= runs:
                break
            time.sleep(0.2)
    time.sleep(1.0)


def run(args, work: Path, port: int) -> dict:
    n, batch = args.subjects, args.batch_size
    params = flow_parameters(batch, args.records_per_task)
    report: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "subjects": n,
        "batch_size": batch,
        "rate_limit_per_second": RATE_PER_SECOND,
        "flow_parameters": effective_parameters(params),
        "environment": {
            **environment(),
            "database": "sqlite (temporary file, WAL)",
            "sandbox": "separate process: psync sandbox (uvicorn, 1 worker)",
            "prefect_api": "prefect_test_harness (ephemeral server subprocess), one client held for every run, as on the resident runner",
            "profiled": bool(args.profile),
        },
    }
    sandbox = Sandbox(port, work / "sandbox.log")
    try:
        _log(f"sandbox on {sandbox.url}")
        sandbox.start()
        meter = CpuMeter(sandbox.pid)
        upgrade()

        # 1. seed through the real intake --------------------------------------------
        _log(f"intake of {n} sign-ups + confirmations")
        started = time.perf_counter()
        with Profiler(args.profile, "intake"):
            outcomes = seed.seed(n, args.intake_slice)
        seconds = time.perf_counter() - started
        lines = 2 * n
        report["intake"] = {
            "lines": lines,
            "seconds": seconds,
            "lines_per_second": lines / seconds,
            "outcomes": dict(outcomes),
            "transaction_lines": CHUNK,  # psync intake's chunk (intake.lines.CHUNK)
        }
        if outcomes.get("stored") != lines:
            raise RuntimeError(f"intake stored {outcomes.get('stored')} of {lines} lines")

        # The seeded database, copied before any sync: each full sync but the first starts
        # again from it, against an emptied sandbox.
        database = Path(get_engine().url.database)  # the configured SQLite file, as SQLAlchemy reads the URL
        seeded = work / "seeded.db"
        copy_database(database, seeded)

        with prefect_api():
            retries = ApiRetries().install()
            started = time.perf_counter()
            for _ in range(args.warmup_runs):
                warmup_flow()
            # The sync flow itself once, on the empty service_offers list: registers the flow
            # and warms its code path without touching the newsletter data or the sandbox.
            idle = sync_newsletter_consents(lists=["service_offers"], batch_size=batch)
            if idle.get("pushed") or idle.get("removed"):
                raise RuntimeError(f"warm-up sync of the empty list did work: {idle}")
            settle_api(args.warmup_runs)
            report["prefect_warmup"] = {
                "runs": args.warmup_runs + 1,
                "seconds": time.perf_counter() - started,
                "api_retries": retries.sample()[0],
            }

            # 2-3. baseline and full sync, in turns ------------------------------------
            # Each SYNC_ROUNDS times, alternating, the medians counting: a busy half minute
            # of the machine then slows one round of each side, not one side only (the
            # baseline alone took 3.5 to 6.1 s for the same calls within half an hour).
            base_runs, full_runs = [], []
            for round_ in range(SYNC_ROUNDS):
                _log(f"baseline: plain requests (round {round_ + 1} of {SYNC_ROUNDS})")
                base_runs.append(baseline_round(sandbox, meter, n, batch))
                if round_:
                    copy_database(seeded, database)
                    checkpoint()
                _log(f"full sync (round {round_ + 1} of {SYNC_ROUNDS})")
                full_runs.append(full_round(params, meter, retries, sandbox, n, args.profile and not round_))
                if round_ < SYNC_ROUNDS - 1:
                    sandbox.reset()  # the last round's receivers stay for the incremental syncs
            seeded.unlink()
            base = dict(median_run(base_runs))
            base.update(
                receivers=n,
                receivers_per_second=n / base["seconds"],
                sandbox_receivers=n,
                runs_seconds=[round(run["seconds"], 3) for run in base_runs],
            )
            report["baseline"] = base
            full = dict(median_run(full_runs))
            full.update(
                receivers_per_second=n / full["seconds"], runs_seconds=[round(run["seconds"], 3) for run in full_runs]
            )
            full["task_runs"] = settled_task_runs(full["flow_run_id"])
            full["batches"] = math.ceil(n / batch)
            report["full_sync"] = full

            # 4. change 1%, incremental sync, INCREMENTAL_ROUNDS times ----------------
            rounds = []
            for round_ in range(INCREMENTAL_ROUNDS):
                _log(f"1% change through intake, incremental sync (round {round_ + 1} of {INCREMENTAL_ROUNDS})")
                rounds.append(
                    incremental_round(n, round_, params, meter, retries, sandbox, args.profile and not round_)
                )
            first = rounds[0]
            report["change"] = first.pop("change")
            inc = {
                **first,
                "seconds": statistics.median(r["seconds"] for r in rounds),
                "rounds_seconds": [round(r["seconds"], 3) for r in rounds],
            }
            inc["batches"] = math.ceil(report["change"]["withdrawn"] / batch) + math.ceil(
                report["change"]["changed"] / batch
            )
            report["incremental_sync"] = inc
            if args.explain_misses and inc["seconds"] / full["seconds"] >= TARGET_INCREMENTAL_RATIO:
                _log("incremental target missed: another 1% change, synced under pyinstrument (not timed)")
                report["incremental_profile"] = explain_incremental(n, params, INCREMENTAL_ROUNDS)
    finally:
        sandbox.stop()

    # ratios and targets -----------------------------------------------------------------
    throughput_ratio = report["full_sync"]["receivers_per_second"] / report["baseline"]["receivers_per_second"]
    incremental_ratio = report["incremental_sync"]["seconds"] / report["full_sync"]["seconds"]
    tasks_per_batch = report["full_sync"]["task_runs"]["total"] / report["full_sync"]["batches"]
    report["targets"] = {
        "throughput_ratio": _target(throughput_ratio, ">=", TARGET_THROUGHPUT_RATIO),
        "incremental_ratio": _target(incremental_ratio, "<", TARGET_INCREMENTAL_RATIO),
        "task_runs_per_batch": _target(tasks_per_batch, "<=", TARGET_TASKS_PER_BATCH),
    }
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return report


def baseline_round(sandbox: Sandbox, meter: CpuMeter, n: int, batch: int) -> dict:
    """The same upserts as the full sync's, with plain requests, timed; the sandbox emptied
    after. The payloads are read from the database before the clock starts, and dropped
    after: kept, their 100,000 dicts would weigh on the collector during the flow's turn."""
    started = time.perf_counter()
    payloads = baseline.load_payloads()
    build_seconds = time.perf_counter() - started
    if len(payloads) != n:
        raise RuntimeError(f"baseline loaded {len(payloads)} receivers, expected {n}")
    cpu_before = meter.sample()
    base = baseline.post_batches(sandbox.url, GROUP_NEWSLETTER, payloads, batch)
    base["cpu_seconds"] = CpuMeter.delta(cpu_before, meter.sample())
    base["payload_build_seconds_untimed"] = build_seconds
    del payloads
    held = sandbox_group(sandbox, GROUP_NEWSLETTER)
    if held["receivers"] != n:
        raise RuntimeError(f"baseline: sandbox holds {held['receivers']} receivers, expected {n}")
    sandbox.reset()
    return base


def full_round(params: dict, meter: CpuMeter, retries: ApiRetries, sandbox: Sandbox, n: int, profile: bool) -> dict:
    """A full sync of the seeded database into an empty sandbox, timed and checked: the
    sandbox then holds exactly the `n` subscriptions, each active."""
    full = timed_sync(params, meter, retries, profile, "full_sync")
    held = sandbox_group(sandbox, GROUP_NEWSLETTER)
    full.update(
        receivers=n,
        sandbox_receivers=held["receivers"],
        sandbox_active=held["active"],
        upsert_calls=held["calls"].get("POST /v3/groups/{gid}/receivers/upsertplus", 0),
    )
    if held["receivers"] != n or held["active"] != n:
        raise RuntimeError(
            f"full sync: sandbox holds {held['receivers']} receivers ({held['active']} active), expected {n}"
        )
    return full


def copy_database(source: Path, target: Path) -> None:
    """`source` into `target` through SQLite's backup API: a consistent copy whatever either
    holds in its WAL, which the connections open on `target` see from their next read."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target, timeout=30)) as dst:
        src.backup(dst)


def incremental_round(
    n: int, round_: int, params: dict, meter: CpuMeter, retries: ApiRetries, sandbox: Sandbox, profile: bool
) -> dict:
    """Change another 1% through intake, sync it timed, check the sandbox holds exactly the
    subscriptions that stand."""
    before = sandbox_group(sandbox, GROUP_NEWSLETTER)
    started = time.perf_counter()
    change = seed.change_one_percent(n, round_)
    change["intake_seconds"] = time.perf_counter() - started
    withdrawn_emails = set(change.pop("withdrawn_emails"))
    inc = timed_sync(params, meter, retries, profile, "incremental_sync")
    held = sandbox_group(sandbox, GROUP_NEWSLETTER)
    expected = before["receivers"] - change["withdrawn"] + change["new_confirmed"]
    still_there = len(withdrawn_emails & held["emails"])
    inc.update(
        change=change,
        sandbox_receivers=held["receivers"],
        sandbox_active=held["active"],
        withdrawn_still_at_sandbox=still_there,
        calls={k: v - before["calls"].get(k, 0) for k, v in held["calls"].items() if v != before["calls"].get(k, 0)},
    )
    if held["receivers"] != expected or still_there:
        raise RuntimeError(
            f"incremental round {round_ + 1}: sandbox holds {held['receivers']} receivers "
            f"(expected {expected}), {still_there} withdrawn still there"
        )
    inc["task_runs"] = settled_task_runs(inc["flow_run_id"])
    return inc


def explain_incremental(n: int, params: dict, round_: int) -> dict:
    """Where an incremental sync's wall time goes: a second 1% change (other subscriptions
    than the timed one), synced under pyinstrument; the call tree goes to
    ``results/incremental_sync.pyinstrument.txt``."""
    change = seed.change_one_percent(n, round_)
    counts, profile = profiling.profiled(lambda: sync_newsletter_consents(**params))
    path = profiling.write_text(profile, RESULTS / "incremental_sync.pyinstrument.txt")

    def spent(functions: list[str], within: str | None = None) -> float:
        return profiling.inclusive(profile.root, functions, within)

    lapsed = spent(["_remove_lapsed"], "push_batch")
    parts = {
        "plan: leftover removals (lapsed consents the cursor has passed)": spent(["live_recipient_ids_among"]),
        "plan: count of changed consents": spent(["count_changed_since"]),
        "leftover removals (remove task)": spent(["remove_batch"]),
        "push: lapsed consents removed (account-wide check, deletes, register)": lapsed,
        "push: changed consents read, confirmed ones upserted, registered, audited": spent(["push_batch"]) - lapsed,
        "counts artifact": spent(["counts_artifact"]),
    }
    parts["Prefect's flow and task runs, client set-up (the rest)"] = profile.seconds - sum(parts.values())
    return {
        "change": {k: v for k, v in change.items() if k != "withdrawn_emails"},
        "counts": counts,
        "profiled_seconds": round(profile.seconds, 3),
        "breakdown_seconds": {k: round(v, 3) for k, v in parts.items()},
        "call_tree": str(path.relative_to(RESULTS.parent.parent)),
        "call_tree_excerpt": profiling.excerpt(profile.text, 45),
    }


def _target(value: float, op: str, bound: float) -> dict:
    ok = {">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    return {"value": round(value, 4), "target": f"{op} {bound}", "result": "PASS" if ok else "MISS"}


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def table(report: dict) -> str:
    f, b, i = report["full_sync"], report["baseline"], report["incremental_sync"]
    t = report["targets"]
    rows = [
        ("subjects (confirmed newsletter)", f"{report['subjects']:,}"),
        ("batch size", f"{report['batch_size']} receivers per upsert call"),
        ("flow parameters", ", ".join(f"{k}={v}" for k, v in report["flow_parameters"].items())),
        ("client rate limit", f"{report['rate_limit_per_second']}/s, sync and baseline (set high on purpose)"),
        ("intake", f"{report['intake']['seconds']:.1f} s  ({report['intake']['lines_per_second']:,.0f} lines/s)"),
        (
            "baseline (plain requests)",
            f"{b['seconds']:.2f} s  ({b['receivers_per_second']:,.0f} receivers/s, {b['calls']} calls)",
        ),
        (
            "full sync",
            f"{f['seconds']:.2f} s  ({f['receivers_per_second']:,.0f} receivers/s, {f['upsert_calls']} upserts)",
        ),
        ("  cpu s client/sandbox/prefect", _cpu(f["cpu_seconds"]) + f"   (baseline {_cpu(b['cpu_seconds'])})"),
        (
            "  prefect API retries (sleeps)",
            f"{f['prefect_api_retries']['count']} ({f['prefect_api_retries']['sleep_seconds']:.1f} s)",
        ),
        ("1% change", f"{report['change']['withdrawn']} withdrawn + {report['change']['new_confirmed']} new"),
        ("incremental sync", f"{i['seconds']:.2f} s  median of {', '.join(f'{x:.2f}' for x in i['rounds_seconds'])}"),
        ("  calls (first round)", _calls(i["calls"])),
        ("  cpu s client/sandbox/prefect", _cpu(i["cpu_seconds"])),
        (
            "  prefect API retries (sleeps)",
            f"{i['prefect_api_retries']['count']} ({i['prefect_api_retries']['sleep_seconds']:.1f} s)",
        ),
        ("task runs, full", f"{f['task_runs']['total']} for {f['batches']} batches  {f['task_runs']['by_task']}"),
        (
            "task runs, incremental",
            f"{i['task_runs']['total']} for {i['batches']} batches  {i['task_runs']['by_task']}",
        ),
        ("", ""),
        ("ours/baseline throughput", _fmt_target(t["throughput_ratio"])),
        ("incremental/full time", _fmt_target(t["incremental_ratio"])),
        ("task runs per batch", _fmt_target(t["task_runs_per_batch"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" if k else "" for k, v in rows)


def _cpu(cpu: dict) -> str:
    return f"{cpu['client']:.1f}/{cpu['sandbox']:.1f}/{cpu['prefect_server']:.1f}"


def _calls(calls: dict) -> str:
    short = {k.split(" ", 1)[0] + " " + k.rsplit("/", 1)[-1]: v for k, v in calls.items()}
    return ", ".join(f"{k}={v}" for k, v in sorted(short.items()))


def _fmt_target(t: dict) -> str:
    return f"{t['value']:.4f}  (target {t['target']})  {t['result']}"
