"""``python -m bench.report``: ``bench/results/*.json`` -> ``bench/REPORT.md``.

The last step of ``make bench``. One section per job (our throughput against the
plain-``requests`` baseline measured in the same run, calls per item, Prefect task runs per
item), the one-million-subscriber memory figure, the erasure fan-out, the environment, and a
table of every target: met or missed, with the measured cause of each miss. A result that is
missing is reported as not run; the report never runs a benchmark itself.

Imports nothing from prefect or the project: it only reads JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.common import RESULTS, git_commit

REPORT = Path(__file__).resolve().parent / "REPORT.md"
# Ours / baseline per job, with the write-ahead register and the delivery path (issue 14).
THROUGHPUT_TARGETS = {"newsletter": 0.8, "bookings": 0.9, "student_id": 0.8}
INCREMENTAL_TARGET = 0.05  # incremental / full sync time
TASKS_PER_BATCH_TARGET = 1.0
MEMORY_TARGET_MB = 250  # peak, full newsletter sync of 1,000,000 (issue 19: "still under 250 MB")
INTAKE_LINES_TARGET = 20_000  # consent lines/s, chunk by chunk (issue 19, target 2)
INTAKE_MEMORY_TARGET_MB = 400  # peak, 1,000 student-ID orders with maximum-size uploads
# "Close to one processor's time": at most this many times the slowest processor's calls
# made one after the other (the floor no parallel fan-out can beat). Issue 19 keeps it at
# 1.5 (it had been 2 since the fan-out's first benchmark).
FAN_OUT_FLOOR_FACTOR = 1.5


def load(folder: Path = RESULTS) -> dict[str, dict]:
    names = {
        "newsletter": "latest",
        "bookings": "bookings",
        "student_id": "student_id",
        "erasure": "erasure",
        "memory": "memory",
        "intake": "intake",
        "latency": "latency",
        "overhead": "overhead",
    }
    found = {}
    for job, name in names.items():
        path = folder / f"{name}.json"
        if path.exists():
            found[job] = json.loads(path.read_text())
    return found


# formatting -------------------------------------------------------------------------------
def _n(value, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _when(result: dict) -> str:
    return str(result.get("finished_at") or result.get("at") or result.get("started_at") or "?")


def _per(value: float, items: int, digits: int = 4) -> str:
    return f"{value / items:.{digits}f}" if items else "–"


# targets ----------------------------------------------------------------------------------
class Targets:
    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.causes: list[str] = []

    def add(self, what: str, measured: str, target: str, met: bool | None, cause: str = "") -> None:
        result = "not run" if met is None else ("met" if met else "**missed**")
        self.rows.append([what, measured, target, result])
        if met is False:
            self.causes += [f"### {what}: missed", "", cause or "No profile was taken for it in this run.", ""]


def _throughput(
    targets: Targets,
    job: str,
    what: str,
    wall: float,
    cpu: float | None,
    sides: dict | None = None,
    load: list | None = None,
) -> None:
    """The target is the wall-time ratio (as the issues define it); the CPU-time ratio is shown
    beside it, a disagreement between the two is said, and a miss is explained by where the
    time went: `sides` holds (wall seconds, CPU seconds by process) of "baseline" and "ours"."""
    target = THROUGHPUT_TARGETS[job]
    measured = f"{wall:.3f}" + (f" (by CPU time {cpu:.3f})" if cpu is not None else "")
    met = wall >= target
    targets.add(what, measured, f"≥ {target}", met, _throughput_cause(wall, cpu, sides, load, target))
    if cpu is not None and met and cpu < target:
        targets.rows[-1][-1] = "met by wall time, **not by CPU time**"
    elif cpu is not None and not met and cpu >= target:
        targets.rows[-1][-1] = "**missed** by wall time, met by CPU time"


def _throughput_cause(wall: float, cpu: float | None, sides: dict | None, load: list | None, target: float) -> str:
    if cpu is None or not sides:
        return ""
    (b_wall, b_cpu), (o_wall, o_cpu) = sides["baseline"], sides["ours"]
    b_total, o_total = sum(b_cpu.values()), sum(o_cpu.values())
    lines = [
        (
            f"Measured with the CPU accounting of every process involved (this one, the sandbox, the Prefect "
            f"server): the baseline spent {b_total:.1f} CPU s in {b_wall:.2f} s ({b_total / b_wall:.2f} cores on "
            f"average), ours {o_total:.1f} CPU s (client {o_cpu['client']:.1f}, sandbox {o_cpu['sandbox']:.1f}, "
            f"Prefect server {o_cpu['prefect_server']:.1f}) in {o_wall:.2f} s ({o_total / o_wall:.2f} cores)."
        ),
        "",
    ]
    if cpu >= target:
        lines.append(
            f"By CPU time the ratio is {cpu:.3f}, above the target: the flow costs what it costs when the target "
            "is met, but it got less of the machine than it can use"
            + (
                f" (load average {load[0]:.1f} / {load[1]:.1f} on the cores at the end of the benchmark)"
                if load
                else ""
            )
            + ". The miss is the machine's share during this run, not the flow; a run on an otherwise idle "
            "machine measures it again. A profile would not show it: it records where a thread spends its "
            "wall time, not that the thread waited for a core."
        )
    else:
        lines.append(
            f"By CPU time the ratio is {cpu:.3f}, below the target too: the flow itself costs too much per item. "
            "`python -m bench --profile` (cProfile) or pyinstrument around the flow shows where."
        )
    return "\n".join(lines)


def _cpu_total(cpu: dict | None) -> float | None:
    return sum(cpu.values()) if cpu else None


def _runs(side: dict) -> str:
    """A side's runs, when it ran several times (the median counts)."""
    runs = side.get("runs_seconds") or []
    return f" (median of {', '.join(f'{s:.2f}' for s in runs)})" if len(runs) > 1 else ""


def _turns(ours: dict) -> str:
    """How the two sides of a comparison ran, when each ran several times in turns (`ours`: the flow's side)."""
    runs = len(ours.get("runs_seconds") or [])
    if runs < 2:
        return ""
    return (
        f" The baseline and the full sync ran {runs} times each, in turns (each full sync from a copy of the "
        "seeded database, into an emptied sandbox); the medians count, so a busy minute of the machine slows "
        "one round of each side, not one side."
    )


def _ratio(baseline: float | None, ours: float | None) -> float | None:
    return baseline / ours if baseline and ours else None


def _load_note(results: dict[str, dict]) -> str:
    loads = {job: r.get("environment", {}).get("load_average") for job, r in results.items()}
    loads = {job: v for job, v in loads.items() if v}
    if not loads:
        return ""
    cpus = next((r["environment"].get("cpus") for r in results.values() if r.get("environment")), None)
    busy = max(v[1] for v in loads.values())
    shown = ", ".join(f"{job} {v[0]:.1f}/{v[1]:.1f}" for job, v in loads.items())
    note = f"Load average (1 / 5 min) at the end of each benchmark: {shown}, on {cpus} cores. "
    if cpus and busy > cpus:
        note += (
            "Other work shared the machine (the load exceeded the cores), so absolute times are "
            "noisy, and so are the wall-time ratios: the two sides of a comparison run a minute or "
            "two apart, and one of them may get less of the machine than the other (a ratio "
            "above 1 means the baseline got less)."
        )
    else:
        note += "The machine was otherwise mostly idle."
    return note


# sections ---------------------------------------------------------------------------------
def newsletter(r: dict, targets: Targets) -> list[str]:
    n, b, f, i = r["subjects"], r["baseline"], r["full_sync"], r["incremental_sync"]
    ratio = f["receivers_per_second"] / b["receivers_per_second"]
    changed = r["change"]["changed"]
    inc_calls = sum(i["calls"].values())
    inc_ratio = i["seconds"] / f["seconds"]
    per_batch = f["task_runs"]["total"] / f["batches"]
    cpu = _ratio(_cpu_total(b.get("cpu_seconds")), _cpu_total(f.get("cpu_seconds")))
    inc_cpu = _ratio(_cpu_total(i.get("cpu_seconds")), _cpu_total(f.get("cpu_seconds")))
    out = [
        "## Newsletter consents → CleverReach (`python -m bench`)",
        "",
        (
            f"{n:,} confirmed subscriptions seeded through intake ({r['intake']['lines_per_second']:,.0f} lines/s), "
            f"batches of {r['batch_size']}, flow parameters {', '.join(f'{k}={v}' for k, v in r['flow_parameters'].items())}; measured {_when(r)}."
            + _turns(f)
        ),
        "",
    ]
    out += _table(
        ["", "baseline (plain requests)", "sync-newsletter-consents", "ours / baseline"],
        [
            ["full push", f"{b['seconds']:.2f} s{_runs(b)}", f"{f['seconds']:.2f} s{_runs(f)}", ""],
            [
                "throughput",
                f"{_n(b['receivers_per_second'])} receivers/s",
                f"{_n(f['receivers_per_second'])} receivers/s",
                f"**{ratio:.3f}**",
            ],
            [
                "calls per receiver",
                f"{_per(b['calls'], n)} ({b['calls']} upserts)",
                f"{_per(f['upsert_calls'], n)} ({f['upsert_calls']} upserts)",
                "",
            ],
            [
                "Prefect task runs per receiver",
                "–",
                f"{_per(f['task_runs']['total'], n, 6)} ({f['task_runs']['total']} for {f['batches']} batches: {per_batch:.4f} per batch)",
                "",
            ],
            [
                "CPU s client / sandbox / Prefect server",
                _cpu(b["cpu_seconds"]),
                _cpu(f["cpu_seconds"]),
                f"by CPU time {cpu:.3f}" if cpu else "",
            ],
        ],
    )
    out += _table(
        ["incremental sync after 1 % changed", "figure"],
        [
            ["change", f"{r['change']['withdrawn']} withdrawn, {r['change']['new_confirmed']} new"],
            [
                "time / full sync's time",
                f"{i['seconds']:.3f} s / {f['seconds']:.3f} s = **{inc_ratio:.4f}**"
                + (f" (by CPU time {inc_cpu:.4f}, first round)" if inc_cpu else ""),
            ],
            [
                "rounds (each after another 1 % change; the median counts)",
                ", ".join(f"{x:.2f} s" for x in i.get("rounds_seconds", [i["seconds"]])),
            ],
            ["calls per changed item (first round)", f"{_per(inc_calls, changed, 2)} ({_calls(i['calls'])})"],
            [
                "Prefect task runs per changed item",
                f"{_per(i['task_runs']['total'], changed)} ({_tasks(i['task_runs'])})",
            ],
        ],
    )
    _throughput(
        targets,
        "newsletter",
        "Newsletter full sync throughput / baseline",
        ratio,
        cpu,
        {"baseline": (b["seconds"], b["cpu_seconds"]), "ours": (f["seconds"], f["cpu_seconds"])},
        r.get("environment", {}).get("load_average"),
    )
    targets.add(
        "Newsletter Prefect task runs per batch",
        f"{per_batch:.4f}",
        f"≤ {TASKS_PER_BATCH_TARGET:g}",
        per_batch <= TASKS_PER_BATCH_TARGET,
    )
    targets.add(
        "Newsletter incremental sync / full sync time",
        # Four places: against 0.05, a ratio of 0.0503 shown as 0.050 reads as met.
        f"{inc_ratio:.4f}" + (f" (by CPU time {inc_cpu:.4f})" if inc_cpu else ""),
        f"< {INCREMENTAL_TARGET}",
        inc_ratio < INCREMENTAL_TARGET,
        _incremental_cause(r, inc_ratio),
    )
    return out


def _tasks(runs: dict) -> str:
    return f"{runs['total']}: " + ", ".join(f"{k} {v}" for k, v in sorted(runs.get("by_task", {}).items()))


def _calls(calls: dict[str, int]) -> str:
    """``{"DELETE /v3/groups/{gid}/receivers/{email_or_id}": 500}`` -> ``DELETE …/{email_or_id}: 500``."""
    return ", ".join(f"{k.split(' ', 1)[0]} …/{k.rsplit('/', 1)[-1]}: {v}" for k, v in sorted(calls.items()))


def _cpu(cpu: dict) -> str:
    return f"{cpu['client']:.1f} / {cpu['sandbox']:.1f} / {cpu['prefect_server']:.1f}"


def _incremental_cause(r: dict, ratio: float) -> str:
    full, i = r["full_sync"]["seconds"], r["incremental_sync"]
    budget = INCREMENTAL_TARGET * full
    lines = [
        (
            # Milliseconds: a miss by a few of them reads "allows 0.19 s; took 0.19 s" in hundredths.
            f"The target allows {budget:.3f} s ({INCREMENTAL_TARGET} × the full sync's {full:.3f} s); the incremental "
            f"sync took {i['seconds']:.3f} s. Its work does not shrink with the change as the full sync's does:"
        ),
        "",
    ]
    profile = r.get("incremental_profile")
    if profile:
        change = profile["change"]
        lines += [
            (
                f"Profile (pyinstrument, a second 1 % change — {change['withdrawn']} withdrawn, {change['new_confirmed']} "
                f"new — synced untimed; {profile['profiled_seconds']:.2f} s under the profiler; call tree in "
                f"`{profile['call_tree']}`):"
            ),
            "",
        ]
        lines += _table(
            ["where the wall time goes", "seconds"], [[k, f"{v:.3f}"] for k, v in profile["breakdown_seconds"].items()]
        )
        lines += [
            "<details><summary>call tree (head)</summary>",
            "",
            "```",
            profile["call_tree_excerpt"],
            "```",
            "",
            "</details>",
            "",
        ]
        lines += [
            (
                "What that means: the sync goes through the changed consents once (withdrawals are deleted "
                "account-wide, 250 addresses a call, as the push reaches them), so its own work grows with the "
                "change; what does not shrink with it is Prefect's fixed cost per run (creating the flow run and "
                "its states on the API, the task runs, the artifact) and the client's set-up (token, groups). On "
                "a loaded machine that fixed cost and the noise weigh most."
            ),
        ]
    else:
        lines.append("Not profiled in this run (`python -m bench --explain-misses` profiles it).")
    return "\n".join(lines)


def bookings(r: dict, targets: Targets) -> list[str]:
    n, b, p = r["bookings"], r["baseline"], r["push_bookings"]
    runs = p["task_runs"]["total"] if isinstance(p["task_runs"], dict) else p["task_runs"]
    out = [
        "## Bookings → TIMIFY and Flexperto (`python -m bench.bookings`)",
        "",
        f"{n:,} bookings ({r['video']:,} by video) through intake; measured {_when(r)}.",
        "",
    ]
    out += _job_table(
        "bookings",
        b,
        p,
        n,
        runs,
        r["throughput_ratio"],
        r.get("cpu_ratio"),
        f"appointments at TIMIFY: {r['appointments_at_timify']:,}, created twice: {r['appointments_created_twice']}",
    )
    _throughput(
        targets,
        "bookings",
        "Bookings throughput / baseline",
        r["throughput_ratio"],
        r.get("cpu_ratio"),
        _sides(b, p),
        r.get("environment", {}).get("load_average"),
    )
    return out


def student_id(r: dict, targets: Targets) -> list[str]:
    n, b, p = r["orders"], r["baseline"], r["forward_student_id_orders"]
    issuer = r["issuer"]
    out = [
        "## Student-ID orders → ISIC (`python -m bench.student_id`)",
        "",
        (
            f"{n:,} orders with three documents each through intake; per order `cardholders.set`, "
            f"`cardholders.setPhoto`, `cards.list`, `cards.request` on both sides; measured {_when(r)}."
        ),
        "",
    ]
    out += _job_table(
        "orders",
        b,
        p,
        n,
        p["task_runs"]["total"],
        r["throughput_ratio"],
        r.get("cpu_ratio"),
        f"cardholders at the issuer: {issuer['cardholders']:,}, cards created twice: {issuer['cards_created_twice']}, "
        f"cards without the photo: {issuer['cards_without_photo']}",
    )
    _throughput(
        targets,
        "student_id",
        "Student-ID throughput / baseline",
        r["throughput_ratio"],
        r.get("cpu_ratio"),
        _sides(b, p),
        r.get("environment", {}).get("load_average"),
    )
    return out


def _sides(base: dict, ours: dict) -> dict | None:
    if not (base.get("cpu_seconds") and ours.get("cpu_seconds")):
        return None
    return {"baseline": (base["seconds"], base["cpu_seconds"]), "ours": (ours["seconds"], ours["cpu_seconds"])}


def _job_table(
    unit: str, base: dict, ours: dict, n: int, task_runs: int, ratio: float, cpu: float | None, checks: str
) -> list[str]:
    one = unit[:-1]
    rows = [
        ["time", f"{base['seconds']:.2f} s", f"{ours['seconds']:.2f} s", ""],
        [
            "throughput",
            f"{_n(n / base['seconds'], 1)} {unit}/s",
            f"{_n(n / ours['seconds'], 1)} {unit}/s",
            f"**{ratio:.3f}**",
        ],
        [
            f"calls per {one}",
            f"{_per(base['calls'], n, 2)} ({base['calls']:,})",
            f"{_per(ours['calls'], n, 2)} ({ours['calls']:,})",
            "",
        ],
        [f"Prefect task runs per {one}", "–", f"{_per(task_runs, n)} ({task_runs})", ""],
    ]
    if base.get("cpu_seconds") and ours.get("cpu_seconds"):
        rows.append(
            [
                "CPU s client / sandbox / Prefect server",
                _cpu(base["cpu_seconds"]),
                _cpu(ours["cpu_seconds"]),
                f"by CPU time {cpu:.3f}" if cpu else "",
            ]
        )
    rows.append(["checks", "", checks, ""])
    return _table(["", "baseline (plain requests)", "our flow", "ours / baseline"], rows)


def erasure(r: dict, targets: Targets) -> list[str]:
    f, q = r["fan_out"], r.get("queued")
    out = [
        "## Erasure fan-out (`python -m bench.erasure`)",
        "",
        f"One person erased at all five processors, every answer delayed {r['latency_ms']} ms; measured {_when(r)}.",
        "",
    ]
    rows = [
        ["`fan-out-erasure` (one task per processor, in parallel)", f"{f['parallel_s']:.2f} s"],
        ["the same flow on one thread (one processor after the other)", f"{f['sequential_s']:.2f} s"],
        ["parallel / sequential", f"**{f['ratio']:.3f}**"],
    ]
    floor = f.get("slowest_processor_floor_s")
    if floor:
        rows += [
            ["calls per processor (parallel run)", ", ".join(f"{k} {v}" for k, v in f["calls_by_processor"].items())],
            [
                "floor: the slowest processor's calls one after the other",
                f"{f['slowest_processor']}: {f['calls_by_processor'][f['slowest_processor']]} × {r['latency_ms']} ms = {floor:.2f} s",
            ],
            ["parallel / floor", f"{f['parallel_over_floor']:.2f}"],
            ["Prefect task runs per erasure request", str(f["task_runs"]["total"])],
        ]
    if q:
        rows += [
            [
                f"{q['requests']:,} queued requests (CleverReach), `follow-up-erasures`",
                f"{q['seconds']:.2f} s in {q['runs']} run(s): **{q['requests_per_second']:,.1f} requests/s**, {q['still_open']} still open",
            ]
        ]
    out += _table(["", "figure"], rows)
    if floor:
        met = f["parallel_s"] <= FAN_OUT_FLOOR_FACTOR * floor
        targets.add(
            "Erasure fan-out close to one processor's time",
            f"{f['parallel_s']:.2f} s = {f['parallel_over_floor']:.2f} × floor "
            f"(parallel / sequential {f['ratio']:.3f})",
            f"≤ {FAN_OUT_FLOOR_FACTOR:g} × floor ({floor:.2f} s)",
            met,
            "The fan-out's own steps (claiming, the flow and task runs, finishing the request) outweigh "
            "the calls; see the erasure section.",
        )
    else:
        targets.add(
            "Erasure fan-out close to one processor's time", f"parallel / sequential {f['ratio']:.3f}", "–", None
        )
    return out


def memory(r: dict, targets: Targets) -> list[str]:
    s, sb = r["sync"], r["sandbox"]
    peak, met = r["peak_rss_mb"], r["peak_rss_mb"] < MEMORY_TARGET_MB
    check = r["check_against_intake"]
    out = [
        f"## Memory: full sync of {r['subscribers']:,} subscribers (`python -m bench.memory`)",
        "",
        (
            f"Seeded straight into the database ({r['seed']['subjects_per_second']:,} subjects/s, {r['seed']['seconds']:.0f} s, "
            f"database {r['seed']['database_mb']:,} MB): the rows intake writes, checked first on {check['subjects']:,} subjects "
            "seeded both ways (same pushed payloads, same rows in every table but ids and write times, audit chain intact). "
            f"Then `psync {s['command']}` in a process of its own against a local Prefect API; the sandbox "
            "runs in another. The sync is started by a small launcher process that takes its `ru_maxrss`: "
            "started straight from the benchmark, it would report the benchmark's own peak instead (the "
            "kernel carries a process's high-water mark across fork and exec; a first attempt read 421 MB "
            f"for a 165 MB sync that way). Measured {_when(r)}."
        ),
        "",
    ]
    quarters = s.get("rss_mb_at_quarters") or []
    out += _table(
        ["", "figure"],
        [
            [
                "peak resident memory of the sync process (`ru_maxrss`)",
                f"**{peak:,.0f} MB** (target < {MEMORY_TARGET_MB} MB: {'met' if met else 'missed'})",
            ],
            ["the same, polled from /proc while it ran (`VmHWM`)", f"{s['polled_high_water_mb']:,.0f} MB"],
            ["resident memory at ¼, ½, ¾ of the run and at its end", " / ".join(f"{q:,.0f}" for q in quarters) + " MB"],
            [
                "sync time",
                f"{s['seconds']:.1f} s, {s['receivers_per_second']:,} receivers/s ({s['cpu_seconds']:.0f} CPU s)",
            ],
            ["Prefect task runs per receiver", f"{s['task_runs_per_receiver']:.6f} ({s['task_runs'].get('total')})"],
            [
                "arrived",
                f"{sb['active_receivers']:,} active receivers at the sandbox, {r['register_live_rows']:,} live register rows at CleverReach"
                + (f" and {r['register_live_rows_usu']:,} at USU" if "register_live_rows_usu" in r else ""),
            ],
            ["sandbox (holds every receiver; not counted)", f"peak {sb['peak_rss_mb']:,.0f} MB"],
        ],
    )
    targets.add(
        f"Peak memory, full sync of {r['subscribers']:,}",
        f"{peak:,.0f} MB",
        f"< {MEMORY_TARGET_MB} MB",
        met,
        "See the memory section; profile it with tracemalloc in the sync process.",
    )
    if r["subscribers"] < 1_000_000:
        out += [f"*Run with `--subscribers {r['subscribers']:,}`: not the one-million figure.*", ""]
    return out


# What was tried for the consent import's rate, and what it gave (not measured again each run).
INTAKE_TRIED = (
    "Done so far: chunks of 5,000 lines, each transaction with a 64 MB page cache, a chunk's objects "
    "freed by reference count before the cycle collector resumes (together about 1.5 times the lines per "
    "CPU second), and row ids ordered by time (UUID version 7: 10,295 and 9,886 against 8,321 and 8,364 "
    "lines/s with random ids, measured alternating). Tried and left out, each a whole import of these "
    "200,000 lines on this machine: a chunk's commit on a thread of its own while the next chunk is "
    "validated (10,192 and 10,150 against 10,387 and 10,461 lines/s: the two threads fight over the "
    "interpreter lock at every step SQLite returns to Python); validation in a second process with the "
    "events pickled back a chunk at a time (11,133 and 11,072 lines/s against 9,996 to 10,893 for the "
    "same code in one process, 2026-12-07: the main process still spent 88-90 CPU us a line, the unpickling "
    "and the shared cores taking back most of what validation cost it); the same store with validation "
    "taken out altogether, the ceiling of any design that only moves validation elsewhere (13,452 lines/s, "
    "74 us a line); two processes at once, each importing half of the subjects into the same database "
    "(11,104 lines/s against 9,850 for one of them alone: SQLite's write lock is held from each chunk's "
    "first read to its commit, so the two stores take turns and only validation overlaps); chunks of "
    "10,000 and 20,000 lines (10,705 and 9,882 against 10,893: the commits cost less a line, the reads and "
    "inserts more); dedupe keys of 32 hex characters instead of 64 (10,890 and "
    "10,268 against 10,732 and 9,762: within the noise); the 64 MB page cache kept from one chunk to the "
    "next, or SQLite reading through mmap (10,741 and 9,699, 10,489 and 10,144 against 11,206 and 9,450: "
    "no change); single-statement bulk inserts, so that a writer thread would not take the interpreter "
    "lock back at every row (`INSERT ... SELECT FROM json_each(?)`, multi-row `VALUES`: SQLite alone took "
    "10.0 and 8.8-9.0 us a row against 4.4-5.5 with `executemany`). What one random-order index costs, "
    "measured by dropping two of them in a scratch database (the audit rows' and the subjects' pseudonym "
    "indexes): the commits 7.0 to 4.1-4.4 us a line, the two tables' inserts 3.5 us less, so about 3 us a "
    "line each, some 12 for the four. An audit row per chunk instead of per line, which would be the "
    "privacy officer's decision, would save at most the audit rows' share above, not half. "
    "20,000 lines/s needs both: the work per line cut by about a third (the four random-order indexes of "
    "hashed or personal values, the dedupe keys, pseudonyms and e-mail addresses, are most of SQLite's "
    "inserts and commits) and the rest spread over both cores, with the writes of one chunk overlapping "
    "the next chunk's work, which needs its reads checked against other writers at commit. Not done."
)
# What a split over the cores that shares one database gave, measured with a prototype on
# 2026-12-07 (not in the project: the check at commit it would need is not built).
INTAKE_SPLIT = (
    "A split that shares one database adds to that ceiling's work, measured on 2026-12-07 with a prototype "
    "(two processes, half of the subjects each, into one database; each chunk read and applied outside "
    "SQLite's write lock, then under it read again, written and committed; without the process that would "
    "hand out the lines and collect the results, and with only part of the check at commit that would keep "
    "it from overwriting what another writer committed in between, an erasure among them): 16,761 and "
    "16,675 lines/s at 5,000 lines a chunk, 17,681 at 10,000, 18,557 at 20,000, against a ceiling of "
    "23,395 measured beside them. Under the lock a line took 62 us instead of 43 alone: each worker's "
    "chunk dirties nearly every page of the four random-order indexes, and those pages now go to the WAL "
    "at twice as many commits."
)


def _intake_breakdown(c: dict) -> list[str]:
    """Where a consent line's wall time goes, from the import's own measurements: SQL by
    statement kind and the commits (timed at the driver), validation (a separate pass over
    the file), and the rest, our Python."""
    database = c.get("database_seconds")
    if not database or not c.get("lines"):
        return []
    lines, total = c["lines"], c["seconds"]

    def row(what: str, seconds: float) -> list[str]:
        return [what, f"{1e6 * seconds / lines:.1f}", f"{seconds / total:.0%}"]

    major = {kind: sec for kind, sec in database.items() if sec >= 0.01 * total}
    rows = [row(f"SQLite: `{kind}`" if kind != "COMMIT" else "SQLite: the commits", sec) for kind, sec in major.items()]
    others = sum(database.values()) - sum(major.values())
    if others >= 0.0005 * total:
        rows.append(row("SQLite: the other statements", others))
    validation = c.get("validation_seconds")
    if validation is not None:
        rows.append(row("validation: JSON and the pydantic models (a separate pass over the file)", validation))
    rest = total - sum(database.values()) - (validation or 0.0)
    rows.append(row("the rest: our Python (consent state machine, dedupe keys, pseudonyms, audit chain, rows)", rest))
    rows.append(["**the whole import**", f"**{1e6 * total / lines:.1f}**", "100%"])
    return [
        (
            "Where a consent line's wall time goes, measured in the import above (the median round): SQL "
            "statements and commits timed where the driver is called (SQLite's work and the binding of the "
            "values), validation in one more pass over the file that stores nothing, the rest by difference:"
        ),
        "",
        *_table(["", "us per line", "share"], rows),
    ]


def _intake_budget(c: dict) -> str:
    """The consent import's rate against its target in time per line, from this run."""
    lines = c["lines"]
    per_line = 1e6 * c["seconds"] / lines
    budget = 1e6 / INTAKE_LINES_TARGET
    text = f"{INTAKE_LINES_TARGET:,} lines/s leaves {budget:.0f} us a line; this import took {per_line:.1f}"
    database = c.get("database_seconds")
    if database:
        text += f", of which SQLite's statements and commits alone {1e6 * sum(database.values()) / lines:.1f}"
    if c.get("cpu_seconds") and c.get("cores"):
        cpu = 1e6 * c["cpu_seconds"] / lines
        text += (
            f". It spent {cpu:.1f} CPU us a line on one core; spread perfectly over this machine's "
            f"{c['cores']} cores, that much work would allow at most {c['cores'] * 1e6 / cpu:,.0f} lines/s"
        )
    return text + "."


def _intake_split(split: dict | None) -> list[str]:
    """The split ceiling measured in this run, against the target (none without one)."""
    if not split:
        return []
    return [
        (
            f"Measured in this run, the most any split of the import over this machine's {split['parts']} cores "
            f"could give: {split['lines_per_second']:,} lines/s ({split['lines_per_second'] / INTAKE_LINES_TARGET:.2f} "
            f"of the target), the subjects in {split['parts']} parts imported at once into databases of their own."
        ),
        INTAKE_SPLIT,
    ]


def intake(r: dict, targets: Targets) -> list[str]:
    c, b, again = r["consents"], r["baseline"], r["reimport"]
    rounds = r.get("consent_rounds") or [c["lines_per_second"]]
    orders = r["orders_result"]
    largest = max(orders, key=int)
    peak = orders[largest]["peak_rss_mb"]
    rate_met = c["lines_per_second"] >= INTAKE_LINES_TARGET
    peak_met = peak < INTAKE_MEMORY_TARGET_MB and int(largest) >= 1000
    out = [
        "## Intake: a file chunk by chunk (`python -m bench.intake`)",
        "",
        (
            f"{r['subjects']:,} sign-ups and their confirmations ({c['lines']:,} lines) imported from a file as "
            "`psync intake` does (`flows.intake.import_lines`: 5,000 lines a transaction), each measurement in a "
            "process of its own on a fresh SQLite database; the baseline is the same file through the "
            "one-transaction path (`flows.intake.intake_lines`, what `psync intake` did before) in the same run. "
            f"Then student-ID orders with maximum-size uploads ({r['max_document_bytes'] / 1048576:.0f} MiB proof and "
            "ID copy, 2 MiB photo; the orders share three files on disk). Peak memory is each process's `VmHWM`. "
            f"Measured {_when(r)}."
        ),
        "",
    ]
    rows = [
        [
            "consents, chunk by chunk" + (f", the median of {len(rounds)} rounds" if len(rounds) > 1 else ""),
            f"**{c['lines_per_second']:,} lines/s** ({c['seconds']:.1f} s"
            + (f"; {c['lines_per_cpu_second']:,} per CPU s" if "lines_per_cpu_second" in c else "")
            + (f"; rounds: {', '.join(f'{v:,}' for v in rounds)}" if len(rounds) > 1 else "")
            + ")",
            f"{c['peak_rss_mb']:,.0f} MB",
        ],
        [
            "consents, one transaction (baseline)",
            f"{b['lines_per_second']:,} lines/s ({b['seconds']:.1f} s)",
            f"{b['peak_rss_mb']:,.0f} MB",
        ],
        ["ratio chunked / baseline", f"{r['ratio']:.2f}", ""],
        [
            "the same file again (all duplicates)",
            f"{again['lines_per_second']:,} lines/s ("
            + ", ".join(f"{v:,} {k}" for k, v in sorted(again["outcomes"].items()))
            + ")",
            f"{again['peak_rss_mb']:,.0f} MB",
        ],
    ]
    split = r.get("split_ceiling")
    if split:
        rows.append(
            [
                (
                    f"the ceiling of a split over {split['parts']} cores: the subjects in {split['parts']} parts, "
                    "imported at once, each by a process into a database of its own (nothing shared)"
                ),
                f"{split['lines_per_second']:,} lines/s at most (the slower part {split['seconds']:.1f} s; parts "
                + ", ".join(f"{v:,}" for v in split["part_lines_per_second"])
                + " lines/s)",
                "",
            ]
        )
    for n in sorted(orders, key=int):
        o = orders[n]
        rows.append(
            [
                f"{int(n):,} orders, {o['document_mb']:,} MiB of documents",
                f"{o['seconds']:.1f} s ({o['document_mb_per_second']:,} MiB/s encrypted and stored)",
                f"**{o['peak_rss_mb']:,.0f} MB**" if n == largest else f"{o['peak_rss_mb']:,.0f} MB",
            ]
        )
    out += _table(["", "throughput", "peak memory"], rows)
    out += _intake_breakdown(c)
    top = r.get("profile_top") or []
    if top:
        out += ["Where the consent import's time goes (cProfile, own time, top 12):", ""]
        out += _table(
            ["function", "own s", "share"],
            [[f"`{f['function']}`", f"{f['own_seconds']:.2f}", f"{f['share']:.0%}"] for f in top[:12]],
        )
    cause = " ".join([_intake_budget(c), *_intake_split(split), INTAKE_TRIED])
    targets.add(
        "Intake, consent lines/s (chunked)",
        f"{c['lines_per_second']:,} lines/s",
        f">= {INTAKE_LINES_TARGET:,}",
        rate_met,
        cause,
    )
    targets.add(
        f"Intake peak memory, {int(largest):,} max-size orders",
        f"{peak:,.0f} MB",
        f"< {INTAKE_MEMORY_TARGET_MB} MB (1,000 orders)",
        peak_met,
        "Run with --orders 1000." if int(largest) < 1000 else "See the intake section.",
    )
    return out


LATENCY_JOBS = {
    "bookings": "push-bookings",
    "student_id": "forward-student-id-orders",
    "newsletter_push": "sync-newsletter-consents, push",
    "newsletter_removal": "sync-newsletter-consents, removal",
    "erasure_follow_up": "follow-up-erasures",
}


def latency(r: dict, targets: Targets) -> list[str]:
    """Issue 19, target 1: every job at the processors' pace (``bench.latency``)."""
    rate, goal = r["rate_per_second"], r["target"]
    out = [
        "## At the processors' pace: 100 ms per answer, 50 calls/s (`python -m bench.latency`)",
        "",
        (
            f"The sandbox answers every call after {r['latency_ms']} ms; every processor's client-side limit is "
            f"{rate:g} calls/s (one token bucket per processor and process); `PSYNC_HTTP_IN_FLIGHT` at its default "
            f"({r['in_flight']}); CleverReach calls carry {r['batch_size']} receivers each (so a thousand calls need "
            f"ten thousand people). Each job's flow runs once; measured {_when(r)}. *Sustained*: the calls of the "
            "processor that bounds the job, between its first and its last token, ÷ the configured rate. *Whole "
            "run*: the same calls ÷ the flow run's wall time (its Prefect run and the database work before the "
            "first call and after the last included)."
        ),
        "",
    ]
    rows = []
    for key, name in LATENCY_JOBS.items():
        job = r["jobs"].get(key)
        if job is None:
            continue
        busiest = job["by_processor"][job["busiest"]]
        others = ", ".join(f"{p} {v['calls']:,}" for p, v in job["by_processor"].items() if p != job["busiest"])
        rows.append(
            [
                f"`{name}` ({r['items'][key]:,} items)",
                f"{job['busiest']} {busiest['calls']:,}" + (f" ({others})" if others else ""),
                f"{job['seconds']:.1f} s",
                f"{busiest['calls_per_second']:.1f}/s",
                f"**{job['calling_rate_ratio']:.3f}**" if job["calling_rate_ratio"] else "–",
                f"{job['rate_ratio']:.3f}",
            ]
        )
        sustained = job["calling_rate_ratio"] or 0.0
        targets.add(
            f"At the processors' pace: {name}",
            f"sustained {sustained:.3f}, whole run {job['rate_ratio']:.3f}",
            f"≥ {goal} of {rate:g}/s",
            sustained >= goal,
            "The processor's bucket gave out fewer tokens than its rate while the job was calling: "
            "too few calls in flight for the answer time (raise `PSYNC_HTTP_IN_FLIGHT`), or the client "
            "could not keep up (CPU: see the load average).",
        )
    out += _table(
        ["job", "calls (bounding processor; others)", "flow run", "achieved", "sustained / rate", "whole run / rate"],
        rows,
    )
    checks = r.get("checks", {})
    out += [
        "Checks after all five: "
        + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in checks.items())
        + ". Where a whole-run ratio is below the sustained one, the difference is the run's work before the first "
        "call and after the last: the Prefect flow and task runs, the write-ahead and the commit of each batch; for "
        "`follow-up-erasures` also, per request after its calls, erasing our own copy and publishing its Art. 19 "
        "report as a Prefect artifact (about 30 and 40 ms a request, measured with pyinstrument; done after the "
        "processors' tasks, so not overlapped with the calls).",
        "",
    ]
    return out


def overhead(r: dict, targets: Targets) -> list[str]:
    """Issue 19, target 4: the fixed cost of one ``psync run`` (``bench.overhead``)."""
    run, temp, beat = r["running_server"], r["temporary_server"], r["running_server_heartbeats_on"]
    resident = r.get("resident_runner")  # results from before the runner have none
    imp, imp_flow, flow = r["import_prefect"], r["import_flow"], r["flow_run_in_process"]
    out = [
        f"## Run overhead: `psync run {r['flow']}` with nothing to do (`python -m bench.overhead`)",
        "",
        (
            f"Each run a process of its own, as a user or cron starts it; median of {r['runs']}; measured "
            f"{_when(r)}. CPU is the process's user + system time."
        ),
        "",
    ]
    rows = []
    if resident:
        rows.append(
            [
                "against the resident runner (`psync up`)",
                f"**{resident['seconds']:.2f} s**",
                f"{resident['cpu_seconds']:.2f} s",
            ]
        )
    out += _table(
        ["", "wall", "CPU"],
        rows
        + [
            [
                "against a running Prefect server (`PREFECT_API_URL` set), no runner",
                f"**{run['seconds']:.2f} s**",
                f"{run['cpu_seconds']:.2f} s",
            ],
            [
                "on the temporary server Prefect starts without one",
                f"**{temp['seconds']:.2f} s**",
                f"{temp['cpu_seconds']:.2f} s",
            ],
            [
                "running server, flow-run heartbeats on (as before)",
                f"{beat['seconds']:.2f} s",
                f"{beat['cpu_seconds']:.2f} s",
            ],
            ["where it goes: `python -c 'import prefect'`", f"{imp['seconds']:.2f} s", f"{imp['cpu_seconds']:.2f} s"],
            [
                "where it goes: the interpreter with the flow's modules imported",
                f"{imp_flow['seconds']:.2f} s",
                f"{imp_flow['cpu_seconds']:.2f} s",
            ],
            [
                "where it goes: the flow run itself, in a process that imported everything",
                f"{flow['seconds']:.2f} s",
                f"{flow['cpu_seconds']:.2f} s",
            ],
        ],
    )
    rest = run["seconds"] - imp_flow["seconds"] - flow["seconds"]
    if rest < 1.0:
        rest_text = f"about {max(rest, 0):.2f} s the CLI and the interpreter's exit"
    else:  # the rows ran at different moments of a loaded machine: their sum is not the whole
        rest_text = (
            f"{rest:.2f} s is not accounted for by the rows measured apart (other load on the machine while "
            f"they ran; by CPU, steadier: {run['cpu_seconds']:.2f} s against {imp_flow['cpu_seconds']:.2f} s of "
            f"imports and {flow['cpu_seconds']:.2f} s of flow run)"
        )
    out += [
        (
            f"Of the {run['seconds']:.2f} s against a running server, {imp_flow['seconds']:.2f} s is the interpreter "
            f"importing what the flow needs ({imp['seconds']:.2f} s of it Prefect's own `import prefect`), "
            f"{flow['seconds']:.2f} s the flow run (creating it on the API, its states, the counts artifact, our "
            f"database reads), and {rest_text}. Cut: Prefect's "
            f"flow-run heartbeat thread, which sleeps in one-second steps and which every run waited for at its end "
            f"({beat['seconds'] - run['seconds']:+.2f} s here); nothing in this project acts on heartbeats. The "
            "temporary server's start (a Prefect server subprocess, its database and migrations) is what "
            "`PREFECT_API_URL` avoids."
        ),
        "",
    ]
    if resident:
        inside = resident.get("runner_side_median_s")
        runner_part = f" ({inside:.2f} s by the runner's log, median)" if inside is not None else ""
        out += [
            (
                f"On the resident runner (`psync runner`, started by `psync up`: psync/runner.py) the "
                f"{resident['seconds']:.2f} s are a `psync run` process that imports no Prefect, no flow and no "
                f"SQLAlchemy (the typer CLI and the settings, about 0.2 s of imports), hands the flow's name and "
                f"parameters over a unix socket, and prints the answer, plus the flow run itself{runner_part} "
                f"in the runner, which imported everything once. CPU counts the `psync run` process only; the "
                f"runner's share is the flow run's ({flow['cpu_seconds']:.2f} CPU s in a warm process)."
            ),
            "",
        ]
    best = resident or run
    where = " on the resident runner" if resident else ""
    own = f"in a process of its own {run['seconds']:.2f} s; " if resident else ""
    targets.add(
        "Run overhead with a running server",
        (
            f"{best['seconds']:.2f} s{where} ({own}the flow run itself {flow['seconds']:.2f} s; "
            f"temporary server {temp['seconds']:.2f} s)"
        ),
        f"< {r['target_s']:g} s",
        best["seconds"] < r["target_s"],
        (
            f"A `psync run` is a new Python process: importing Prefect alone costs {imp['cpu_seconds']:.2f} CPU s "
            f"on this machine, the flow's modules with it {imp_flow['cpu_seconds']:.2f} CPU s (Prefect, SQLAlchemy "
            "and the models, pydantic; profiled with `-X importtime` and pyinstrument: nothing there that the run "
            f"does not use). What a run adds once imported is {flow['seconds']:.2f} s. Below 1 s from the command "
            "line needs a process that stays (`psync up`'s resident runner), not a cheaper start."
        ),
    )
    return out


def _span(results: dict[str, dict]) -> str:
    starts = [r.get("started_at") for r in results.values() if r.get("started_at")]
    ends = [_when(r) for r in results.values()]
    try:
        first = min(datetime.fromisoformat(t) for t in starts + ends)
    except ValueError:
        return ""
    minutes = (datetime.now(UTC) - first).total_seconds() / 60
    return f"{minutes:.1f} min from the first benchmark's start to this report"


def render(results: dict[str, dict], wall: str | None = None) -> str:
    targets = Targets()
    sections: list[str] = []
    for job, make in (
        ("newsletter", newsletter),
        ("bookings", bookings),
        ("student_id", student_id),
        ("erasure", erasure),
        ("memory", memory),
        ("intake", intake),
        ("latency", latency),
        ("overhead", overhead),
    ):
        if job in results:
            sections += make(results[job], targets)
        else:
            sections += [f"## {job}", "", "Not run: no result in `bench/results/`.", ""]
    # The newest result's environment: sections measured earlier (another commit) say when.
    measured = [r for r in results.values() if r.get("environment")]
    env = max(measured, key=_when)["environment"] if measured else {}
    out = [
        "# Benchmark report",
        "",
        (
            f"Written by `bench/report.py` at the end of `make bench`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, from "
            "`bench/results/*.json`. Every throughput is compared with a plain-`requests` baseline making the "
            "same calls against the same sandbox (a separate process) in the same run."
        ),
        "",
    ]
    out += _table(
        ["environment", ""],
        [
            ["CPUs", str(env.get("cpus", os.cpu_count()))],
            ["Python", env.get("python", platform.python_version())],
            ["Prefect", env.get("prefect", "?")],
            ["commit", f"`{env.get('commit') or git_commit()}`"],
            ["database", "SQLite (a temporary file per benchmark, WAL)"],
            ["Prefect API", "the test harness's server (a subprocess, SQLite)"],
            ["wall time", wall or _span(results) or "?"],
        ],
    )
    note = _load_note(results)
    if note:
        out += [note, ""]
    out += ["## Targets", ""]
    out += _table(["target", "measured", "target", "result"], targets.rows)
    out += [
        (
            "A throughput ratio is ours / baseline items per second (wall time), the measure the targets "
            "were set in. *By CPU time* is the same comparison in CPU seconds (client + sandbox + Prefect "
            "server) spent for the same items: other load changes it far less. On an idle machine a flow "
            "that keeps calls in flight (the newsletter sync keeps two) uses the second core while the "
            "baseline waits for each answer, so its wall-time ratio is the higher one; when the cores are "
            "fully taken, the wall-time ratio sinks towards the CPU-time one."
        ),
        "",
    ]
    out += sections
    if targets.causes:
        out += ["## Causes of the missed targets", ""] + targets.causes
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPORT)
    parser.add_argument(
        "--wall-time", default=None, help="the whole run's wall time, as text (default: from the results)"
    )
    args = parser.parse_args(argv)
    results = load()
    if not results:
        print("no results in bench/results/: run the benchmarks first", file=sys.stderr)
        return 1
    args.output.write_text(render(results, args.wall_time))
    print(f"report: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
