"""``python -m bench.bookings [--bookings 10000]``: push-bookings vs. a plain-requests baseline.

Both sides make the same calls against the same sandbox in the same run: per booking one
TIMIFY customer create and one appointment create, and for a video booking one Flexperto
customer create, plus the tokens and the customer-field list once. The baseline has no retry
layer, rate limiter, database, audit or Prefect. Reported: seconds, bookings per second, the
throughput ratio (ours / baseline), calls per booking on each side, Prefect task runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

from bench.common import calls, cpu_of, cpu_ratio, job_environment, log, per_item, write_result

RECORDS_PER_TASK = 500


def _seed(n: int, now: datetime) -> None:
    """N bookings through the real intake (not timed)."""
    from core.settings import get_settings
    from flows.intake import intake_lines
    from models.db import transaction
    from psync.demo_bookings import synthetic_bookings

    settings = get_settings()
    lines, _ = synthetic_bookings(n, seed=11, now=now)
    for start in range(0, n, 5000):
        with transaction() as session:
            results = intake_lines(
                session,
                settings.hmac_key(),
                lines[start : start + 5000],
                now=now,
                service_points=settings.timify.service_points,
            )
        rejected = [r for r in results if r.outcome != "stored"]
        if rejected:
            raise RuntimeError(f"seed rejected {len(rejected)} lines, first: {rejected[0].reason}")


def _payloads() -> list[tuple[str, dict, dict, dict | None]]:
    """(subject id, customer fields, appointment body without customer, Flexperto body) per booking,
    read with the flow's own queries and helpers so both sides send the same data."""
    from sqlmodel import select

    from connectors.timify import berlin_start
    from core.settings import get_settings
    from flows.bookings import _placement, customer_fields
    from models.bookings import Booking, Channel
    from models.db import transaction
    from models.subjects import DataSubject

    settings = get_settings()
    out = []
    with transaction() as session:
        rows = session.exec(
            select(Booking, DataSubject).join(DataSubject, DataSubject.id == Booking.subject_id).order_by(Booking.seq)
        ).all()
        for booking, subject in rows:
            service, resources = _placement(settings, booking)
            fields = {k: v for k, v in customer_fields(booking, subject).items() if v is not None}
            appointment = {
                "externalId": booking.booking_ref,
                "service_id": service,
                "resource_ids": resources,
                "startDate": berlin_start(booking.start_at),
                "duration": booking.duration_min,
            }
            if booking.concern is not None:
                appointment["notes"] = booking.concern
            video = None
            if booking.channel == Channel.video:
                video = {"external_id": booking.booking_ref, "email": subject.email, "phone": booking.phone}
            out.append((str(subject.id), fields, appointment, video))
    return out


def baseline(url: str, payloads) -> dict:
    """The same creates with a plain requests.Session per processor."""
    import requests

    from connectors.timify import FIELD_KEYS
    from psync.sandbox_env import CREDENTIAL_ID, CREDENTIAL_SECRET, TIMIFY_COMPANY_ID

    made = 0
    started = time.perf_counter()
    with requests.Session() as timify, requests.Session() as flex:
        token = timify.post(
            f"{url}/timify/v1/auth/token", json={"appid": CREDENTIAL_ID, "appsecret": CREDENTIAL_SECRET}, timeout=30
        )
        timify.headers.update({"authorization": token.json()["accessToken"], "company-id": TIMIFY_COMPANY_ID})
        fields = timify.get(
            f"{url}/timify/v1/customers/customfields", params={"page": 1, "limit": 100}, timeout=30
        ).json()["data"]
        ids = {name: next(f["id"] for f in fields if f.get(k) == v) for name, (k, v) in FIELD_KEYS.items()}
        flex_token = flex.post(
            f"{url}/flexperto/api/v2/oauth/token",
            auth=(CREDENTIAL_ID, CREDENTIAL_SECRET),
            data={"grant_type": "client_credentials"},
            timeout=30,
        )
        flex.headers["Authorization"] = "Bearer " + flex_token.json()["access_token"]
        made += 3
        for external, customer, appointment, video in payloads:
            body = {
                "externalId": external,
                "customfields": [
                    {"id": ids[k], "value": v.isoformat() if hasattr(v, "isoformat") else str(v)}
                    for k, v in customer.items()
                ],
            }
            r = timify.post(f"{url}/timify/v1/customers", json=body, timeout=30)
            if r.status_code == 409:  # the same person booked twice: update by our id
                r = timify.patch(
                    f"{url}/timify/v1/customers/{external}",
                    params={"external": 1},
                    json={"customfields": body["customfields"]},
                    timeout=30,
                )
            r.raise_for_status()
            customer_id = r.json()["data"]["id"]
            r = timify.post(
                f"{url}/timify/v1/appointments", json={**appointment, "customers": [customer_id]}, timeout=30
            )
            r.raise_for_status()
            made += 2
            if video:
                flex.post(f"{url}/flexperto/api/v2/customers", json=video, timeout=30).raise_for_status()
                made += 1
    return {"seconds": time.perf_counter() - started, "calls": made}


def run(n: int, keep: bool = False) -> dict:
    from bench.common import prefect_api, timed_flow
    from bench.prefect_runs import settled_task_runs
    from bench.procs import CpuMeter, Sandbox
    from flows.bookings import push_bookings
    from models.migrate import upgrade
    from models.types import utcnow

    with job_environment(keep) as (work, port), Sandbox(port, work / "sandbox.log") as sandbox:
        upgrade()
        log(f"intake of {n} bookings")
        _seed(n, utcnow())
        payloads = _payloads()
        meter, base_cpu, ours_cpu = CpuMeter(sandbox.pid), {}, {}
        log("baseline: plain requests")
        with cpu_of(meter, base_cpu):
            base = baseline(sandbox.url, payloads)
        base_state = sandbox.state()
        if len(base_state["timify"]["appointments"]) != n:
            raise RuntimeError("baseline did not book everything")
        base_calls = calls(base_state, "timify", "flexperto")
        sandbox.reset()
        with prefect_api():
            log("push-bookings")
            with cpu_of(meter, ours_cpu):
                ours = timed_flow(push_bookings, records_per_task=RECORDS_PER_TASK)
            task_runs = settled_task_runs(ours["flow_run_id"])
        state = sandbox.state()
    ours_calls = calls(state, "timify", "flexperto")
    seconds = ours["seconds"]
    doubles = sum(1 for v in state["timify"]["creates"]["appointments"].values() if v > 1)
    return {
        "bookings": n,
        "video": sum(1 for p in payloads if p[3]),
        "baseline": {
            "seconds": round(base["seconds"], 2),
            "calls": base_calls,
            "client_calls": base["calls"],
            "calls_per_booking": per_item(base_calls, n, 2),
            "bookings_per_second": round(n / base["seconds"], 1),
            **base_cpu,
        },
        "push_bookings": {
            "seconds": round(seconds, 2),
            "calls": ours_calls,
            "calls_per_booking": per_item(ours_calls, n, 2),
            "bookings_per_second": round(n / seconds, 1),
            "counts": ours["counts"],
            "records_per_task": RECORDS_PER_TASK,
            "task_runs": task_runs,
            "task_runs_per_booking": per_item(task_runs["total"], n),
            **ours_cpu,
        },
        "throughput_ratio": round(base["seconds"] / seconds, 3),
        "cpu_ratio": cpu_ratio(base_cpu["cpu_seconds"], ours_cpu["cpu_seconds"]),
        "appointments_at_timify": len(state["timify"]["appointments"]),
        "appointments_created_twice": doubles,
    }


def table(report: dict) -> str:
    b, p = report["baseline"], report["push_bookings"]
    return "\n".join(
        [
            f"{report['bookings']} bookings ({report['video']} by video) against the sandbox",
            f"{'':<16}{'seconds':>9}{'bookings/s':>12}{'calls':>8}{'calls/booking':>15}",
            f"{'baseline':<16}{b['seconds']:>9}{b['bookings_per_second']:>12}{b['calls']:>8}{b['calls_per_booking']:>15}",
            f"{'push-bookings':<16}{p['seconds']:>9}{p['bookings_per_second']:>12}{p['calls']:>8}{p['calls_per_booking']:>15}",
            (
                f"throughput ratio (ours / baseline): {report['throughput_ratio']} (by CPU time {report['cpu_ratio']}); "
                f"task runs: {p['task_runs']['total']}; "
                f"appointments at TIMIFY: {report['appointments_at_timify']}, created twice: {report['appointments_created_twice']}"
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bookings", description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = parser.parse_args(argv)
    report = run(args.bookings, args.keep)
    path = write_result("bookings", report)
    print(table(report))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
