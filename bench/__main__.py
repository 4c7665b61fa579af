"""``python -m bench [--subjects N] [--batch-size 250]`` — see ``bench/__init__.py``."""

from __future__ import annotations

import argparse
import shutil
import sys
import traceback
from pathlib import Path

from bench import env  # imports nothing from prefect or the project


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Newsletter consent sync vs. a plain-requests baseline, against the sandbox.",
    )
    parser.add_argument("--subjects", type=int, default=100_000, help="confirmed subscriptions (default 100000)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=250,
        help="receivers per upsert call, baseline and sync alike (1..1000, default 250)",
    )
    parser.add_argument(
        "--records-per-task",
        type=int,
        default=None,
        help="pass records_per_task to the flow (default: the flow's own default)",
    )
    parser.add_argument(
        "--intake-slice",
        type=int,
        default=10_000,
        help="subjects per intake transaction while seeding (default 10000 = 20000 lines)",
    )
    parser.add_argument(
        "--warmup-runs",
        type=int,
        default=3,
        help="untimed Prefect warm-up flow runs before the syncs (default 3)",
    )
    parser.add_argument(
        "--explain-misses",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when the incremental target is missed, sync another 1%% change under pyinstrument (default on)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile intake and both syncs into bench/results/*.prof (slows them down)",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON report (default bench/results/latest.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = parser.parse_args(argv)
    if args.subjects < 200:
        parser.error("--subjects must be at least 200 (1% of them must be >= 2)")
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be 1..1000")
    if args.intake_slice < 1:
        parser.error("--intake-slice must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    port = env.free_port()
    work = env.prepare(args.batch_size, port)
    try:
        from bench import run  # only now: imports prefect and the project

        report = run.run(args, work, port)
        output = args.output or run.RESULTS / "latest.json"
        report["temporary_directory"] = str(work) if args.keep else None
        run.write(report, output)
        print(run.table(report))
        print(f"\nreport: {output}")
        return 0  # a MISS is a finding, not a failure
    except Exception:  # noqa: BLE001 - any failure is printed and becomes the exit code
        traceback.print_exc()
        print(f"\nbench crashed; temporary directory kept: {work}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
