"""``python -m bench.intake [--subjects 100000] [--orders 1000] [--rounds 3]``: intake of a file, chunk by chunk.

Issue 19, target 2. Each measurement runs in a process of its own (``--child``), whose peak
resident memory is its ``VmHWM`` read at its end (``ru_maxrss`` would carry the launcher's
high-water mark across fork and exec), on a fresh SQLite database:

- **consents**: N sign-ups and their confirmations (2N lines, ``bench.seed``'s lines),
  imported from a file as ``psync intake`` does (``flows.intake.import_lines``: a chunk of
  lines at a time, each its own transaction), in three rounds (``--rounds``), each into a
  fresh database (the median counts); lines/s and peak MB, and where the time goes (SQL by
  statement and the commits timed at the driver, validation in a separate pass). The
  baseline, in the same run: the same file through the one-transaction path
  (``flows.intake.intake_lines``, what ``psync intake`` did before), so the ratio is
  chunked / one transaction.
- **re-import**: the same file again into the imported database: every line a duplicate.
- **split ceiling**: the same file split by subject into one part per core, each part imported
  at the same time by a process of its own into a database of its own: what any design that
  spreads the import over this machine's cores could reach at most, as nothing is shared (no
  write lock, no check at commit). The rate is all lines ÷ the slower part's import time (as
  above, without the processes' start).
- **orders**: M student-ID orders with maximum-size uploads (the document limit for the
  proof and the ID copy, the photo's own limit), imported the same way; peak MB, against a
  tenth of M to show it flat. The orders share three files on disk (the bytes read and
  encrypted are the same as with a file each, without tens of GB of source files).

Results in ``bench/results/intake.json``; ``bench.report`` renders them. ``--profile`` runs the
consent import under cProfile into ``bench/results/intake.prof`` and prints its top functions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from bench.common import DOCUMENT_KEY, RESULTS, log, median_run, write_result

TARGET_LINES_PER_SECOND = 20_000
TARGET_PEAK_MB = 400
MiB = 1024 * 1024


def high_water_mb() -> float:
    """This process's peak resident memory so far (``VmHWM``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


# A statement's kind in the breakdown: its verb and first table ("INSERT consent_event").
_STATEMENT = re.compile(r"^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM|SELECT\b.*?\bFROM)\s+(\w+)", re.S | re.I)


def time_database(engine) -> dict[str, float]:
    """Seconds this process spends in SQL statements, by kind (``statement_kind``), and in
    commits ("COMMIT"), from SQLAlchemy's events on `engine`; filled as the process runs.

    The clock starts as the driver is called and stops when it returns: SQLite's own work
    and the driver's binding of the parameters, not the Python that built them."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    seconds: dict[str, float] = {}
    started: dict[str, float] = {}

    def add(kind: str, since: float) -> None:
        seconds[kind] = seconds.get(kind, 0.0) + time.perf_counter() - since

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):
        conn.info["psync_bench_started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        add(statement_kind(statement), conn.info.pop("psync_bench_started"))

    # The engine's commit event comes just before the driver's commit, the session's
    # after_commit just after it (one session at a time in a measurement's process).
    event.listen(engine, "commit", lambda conn: started.__setitem__("commit", time.perf_counter()))
    event.listen(Session, "after_commit", lambda session: add("COMMIT", started.pop("commit", time.perf_counter())))
    return seconds


def statement_kind(statement: str) -> str:
    """``"INSERT consent_event"`` for an INSERT INTO consent_event, and so on; other
    statements (BEGIN, PRAGMA) by their first word.

    >>> statement_kind("SELECT data_subject.id FROM data_subject WHERE ...")
    'SELECT data_subject'
    >>> statement_kind("UPDATE counter SET value=(counter.value + ?)")
    'UPDATE counter'
    """
    found = _STATEMENT.match(statement)
    return f"{found[1].split()[0].upper()} {found[2]}" if found else statement.split(None, 1)[0].upper()


def validation_seconds(path: Path, now) -> float:
    """Seconds one pass of validation takes over the file (JSON and the pydantic models, as
    intake reads it), nothing stored: the validation's share, measured apart."""
    from intake.lines import parse_lines, validation_context

    started = time.perf_counter()
    with path.open("rb") as lines:
        for _ in parse_lines(lines, validation_context(now)):
            pass
    return time.perf_counter() - started


def child(mode: str, path: Path, profile: Path | None, validation_pass: bool = False) -> dict:
    """One measurement in this (fresh) process: intake of the file at `path`; with
    `validation_pass`, one more pass over the file that only validates, timed apart."""
    from collections import Counter

    from core.settings import get_settings
    from flows.intake import import_lines, intake_lines
    from models.db import get_engine, transaction
    from models.migrate import upgrade
    from models.types import utcnow

    upgrade()
    settings = get_settings()
    database = time_database(get_engine())
    counts: Counter[str] = Counter()
    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started, cpu_started = time.perf_counter(), time.process_time()
    options = {
        "now": utcnow(),
        "base_dir": path.parent,
        "document_key": settings.document_key_bytes(),
        "max_document_bytes": settings.isic.max_document_bytes,
    }
    with path.open("rb") as lines:
        if mode == "one-transaction":
            with transaction() as session:
                counts.update(r.outcome for r in intake_lines(session, settings.hmac_key(), lines, **options))
        else:
            for results in import_lines(settings.hmac_key(), lines, **options):
                counts.update(r.outcome for r in results)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    lines_done = sum(counts.values())
    peak_mb = high_water_mb()  # the import's, before the validation pass
    # The import's statements only (the migrations ran before the listeners were attached).
    sql = {kind: round(value, 4) for kind, value in sorted(database.items(), key=lambda kv: -kv[1])}
    extra = {"validation_seconds": round(validation_seconds(path, options["now"]), 3)} if validation_pass else {}
    return {
        "mode": mode,
        "lines": lines_done,
        "seconds": round(seconds, 3),
        "lines_per_second": round(lines_done / seconds),
        # The machine is shared: CPU seconds compare runs better than wall time does.
        "cpu_seconds": round(cpu_seconds, 3),
        "lines_per_cpu_second": round(lines_done / cpu_seconds),
        "peak_rss_mb": peak_mb,
        "outcomes": dict(counts),
        "database_seconds": sql,
        "cores": os.cpu_count(),
        **extra,
    }


def run_child(
    mode: str, path: Path, database: Path, profile: Path | None = None, validation_pass: bool = False
) -> dict:
    env = {**os.environ, "PSYNC_DATABASE_URL": f"sqlite:///{database}"}
    command = [sys.executable, "-m", "bench.intake", "--child", mode, "--file", str(path)]
    if profile is not None:
        command += ["--profile-to", str(profile)]
    if validation_pass:
        command.append("--validation-pass")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=6 * 3600)
    if done.returncode:
        raise RuntimeError(f"bench.intake child {mode} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["database_mb"] = round(database.stat().st_size / MiB, 1)
    return result


def remove_database(path: Path) -> None:
    """A SQLite database file and its WAL and shared-memory files, if there."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def write_consents(path: Path, subjects: int) -> int:
    from bench import seed
    from models.types import utcnow

    base = utcnow() - timedelta(days=20)
    with path.open("w") as out:
        n = 0
        for line in seed.signup_confirm_lines(0, subjects, base):
            out.write(line + "\n")
            n += 1
    return n


def split_by_subject(path: Path, parts: int) -> list[Path]:
    """`path`'s lines in `parts` files next to it, each person's lines in one of them (by a
    hash of the line's e-mail address), in their order."""
    paths = [path.with_name(f"{path.stem}-part{n}{path.suffix}") for n in range(parts)]
    outs = [p.open("w") for p in paths]
    try:
        with path.open() as lines:
            for line in lines:
                outs[zlib.crc32(json.loads(line)["email"].encode()) % parts].write(line)
    finally:
        for out in outs:
            out.close()
    return paths


def split_ceiling(consents: Path, work: Path, parts: int) -> dict:
    """The consent file imported in `parts` parts at once, each by a process of its own into
    a fresh database of its own (``split_by_subject``): all lines ÷ the slowest part's import
    time, the most any split of the import over `parts` cores could give here."""
    files = split_by_subject(consents, parts)
    databases = [work / f"split{n}.db" for n in range(parts)]
    try:
        with ThreadPoolExecutor(parts) as pool:
            runs = list(pool.map(lambda pair: run_child("chunked", *pair), zip(files, databases, strict=True)))
    finally:
        for file, database in zip(files, databases, strict=True):
            file.unlink(missing_ok=True)
            remove_database(database)
    lines = sum(run["lines"] for run in runs)
    seconds = max(run["seconds"] for run in runs)
    return {
        "parts": parts,
        "lines": lines,
        "seconds": seconds,
        "lines_per_second": round(lines / seconds),
        "part_lines_per_second": [run["lines_per_second"] for run in runs],
    }


def write_orders(folder: Path, orders: int, max_bytes: int) -> int:
    """`orders` order lines naming three documents at their size limits; returns the bytes
    of documents the file names in all."""
    from intake.isic import PHOTO_MAX_BYTES
    from models.types import utcnow

    photo_bytes = min(max_bytes, PHOTO_MAX_BYTES)
    docs = {
        "student_proof": ("nachweis.pdf", b"%PDF-1.7\n", max_bytes),
        "id_copy": ("ausweis.png", b"\x89PNG\r\n\x1a\n", max_bytes),
        "photo": ("foto.jpg", b"\xff\xd8\xff\xe0", photo_bytes),
    }
    for name, magic, size in docs.values():
        with (folder / name).open("wb") as out:
            out.write(magic)
            left = size - len(magic)
            while left > 0:  # random, so nothing along the way compresses it away
                piece = os.urandom(min(left, MiB))
                out.write(piece)
                left -= len(piece)
    at = (utcnow() - timedelta(minutes=5)).isoformat()
    with (folder / "orders.jsonl").open("w") as out:
        for i in range(orders):
            order = {
                "type": "isic.order",
                "order_id": f"BENCH-{i}",
                "first_name": f"Vorname{i}",
                "last_name": "Studentin",
                "birth_date": "2004-02-29",
                "email": f"order{i}@example.de",
                "postal_code": "10115",
                "iban": "DE89 3704 0044 0532 0130 00",
                "institution": "Humboldt-Universität zu Berlin",
                "at": at,
                "documents": {role: name for role, (name, _, _) in docs.items()},
            }
            out.write(json.dumps(order) + "\n")
    return orders * sum(size for _, _, size in docs.values())


def top_functions(profile: Path, limit: int = 25) -> list[dict]:
    """The functions the profile spent most own time in (cProfile ``tottime``)."""
    import pstats

    stats = pstats.Stats(str(profile))
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:limit]
    total = sum(v[2] for v in stats.stats.values())
    return [
        {
            "function": f"{Path(file).name}:{line}({name})",
            "own_seconds": round(tt, 3),
            "share": round(tt / total, 3) if total else 0,
        }
        for (file, line, name), (_, _, tt, _, _) in rows
    ]


def profiled(report: dict, consents: Path, work: Path) -> None:
    """The consent import once more under cProfile (``bench/results/intake.prof``), its top
    functions into `report`."""
    profile = RESULTS / "intake.prof"
    RESULTS.mkdir(parents=True, exist_ok=True)
    log("consents: once more under cProfile")
    report["profiled"] = run_child("chunked", consents, work / "profiled.db", profile)
    report["profile_top"] = top_functions(profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100_000, help="sign-ups, each with its confirmation")
    parser.add_argument("--orders", type=int, default=1000, help="student-ID orders with maximum-size uploads")
    parser.add_argument(
        "--rounds", type=int, default=3, help="consent imports, each into a fresh database; the median counts"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the consent import (slows it down)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--consents-only",
        action="store_true",
        help="only the consent part (no baseline, no orders); results are not written to bench/results",
    )
    parser.add_argument("--child", choices=["chunked", "one-transaction"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--validation-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.child:
        print(json.dumps(child(args.child, args.file, args.profile_to, args.validation_pass)))
        return 0

    work = Path(tempfile.mkdtemp(prefix="psync-bench-intake-"))
    os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PSYNC_PSEUDONYM_KEY"] = "bench-pseudonym-key"
    os.environ.setdefault("PSYNC_DOCUMENT_KEY", DOCUMENT_KEY)
    os.environ["PSYNC_DATABASE_URL"] = f"sqlite:///{work / 'unused.db'}"
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    try:
        report: dict = {"started_at": started_at, "subjects": args.subjects, "orders": args.orders}
        consents = work / "consents.jsonl"
        lines = write_consents(consents, args.subjects)
        rounds = []
        for n in range(args.rounds):
            log(f"consents: {lines:,} lines, chunk by chunk (round {n + 1} of {args.rounds})")
            if n:  # each round into a fresh database; the last one's stays for the re-import
                remove_database(work / "chunked.db")
            rounds.append(run_child("chunked", consents, work / "chunked.db", validation_pass=True))
            log(f"consents: {rounds[-1]['lines_per_second']:,} lines/s")
        # The median round counts (the same code varies by about a tenth between runs here).
        report["consents"] = median_run(rounds, by="lines_per_second")
        report["consent_rounds"] = [r["lines_per_second"] for r in rounds]
        log("consents: the same file again")
        report["reimport"] = run_child("chunked", consents, work / "chunked.db")
        cores = os.cpu_count() or 1
        if cores > 1:
            log(f"consents: split by subject over {cores} processes, each with a database of its own")
            report["split_ceiling"] = split_ceiling(consents, work, cores)
            log(f"consents: {report['split_ceiling']['lines_per_second']:,} lines/s at most, split")
        if args.consents_only:
            if args.profile:
                profiled(report, consents, work)
            print(json.dumps(report, indent=2))
            return 0
        log("consents: the baseline, the whole file in one transaction")
        report["baseline"] = run_child("one-transaction", consents, work / "baseline.db")
        report["ratio"] = round(report["consents"]["lines_per_second"] / report["baseline"]["lines_per_second"], 2)
        if args.profile:
            profiled(report, consents, work)
        consents.unlink()
        for name in ("chunked.db", "baseline.db", "profiled.db"):
            remove_database(work / name)

        from core.settings import get_settings

        max_bytes = get_settings().isic.max_document_bytes
        report["orders_result"] = {}
        for orders in sorted({max(1, args.orders // 10), args.orders}):
            folder = work / f"orders-{orders}"
            folder.mkdir()
            document_bytes = write_orders(folder, orders, max_bytes)
            log(f"orders: {orders:,} with {document_bytes / MiB:,.0f} MiB of documents")
            result = run_child("chunked", folder / "orders.jsonl", folder / "orders.db")
            result["document_mb"] = round(document_bytes / MiB)
            result["document_mb_per_second"] = round(document_bytes / MiB / result["seconds"], 1)
            report["orders_result"][str(orders)] = result
            log(f"orders: {orders:,} in {result['seconds']:.0f} s, peak {result['peak_rss_mb']:,.0f} MB")
            shutil.rmtree(folder, ignore_errors=True)
        report["max_document_bytes"] = max_bytes
        report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        path = write_result("intake", report)
        print(json.dumps({k: v for k, v in report.items() if k != "profile_top"}, indent=2))
        print(f"\nreport: {path}")
        return 0
    except Exception:  # noqa: BLE001 - any failure is printed and becomes the exit code
        traceback.print_exc()
        args.keep = True
        return 1
    finally:
        if args.keep:
            log(f"temporary directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
