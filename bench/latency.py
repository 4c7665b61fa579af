"""``python -m bench.latency``: every job at the processors' pace (issue 19, target 1).

The sandbox answers every processor call after ``--latency-ms`` (100), and each processor's
client-side rate limit is ``--rate`` (50 calls/s, ``PSYNC_<PROCESSOR>_RATE_PER_SECOND``);
everything else is at its default, ``PSYNC_HTTP_IN_FLIGHT`` included. Then, one after the
other, each job's flow runs once:

- ``push-bookings``: ``--bookings`` bookings (TIMIFY customer and appointment, Flexperto for
  video ones);
- ``forward-student-id-orders``: ``--orders`` orders (cardholder, photo, cards, card);
- ``sync-newsletter-consents`` push: ``--subscribers`` confirmed subscriptions in upserts of
  ``--batch-size`` receivers (small, so that a thousand calls need ten thousand people, not
  a quarter of a million);
- ``sync-newsletter-consents`` removal: all but ``--queued`` of them withdrawn; deleted from
  the account in calls of ``--batch-size`` addresses;
- ``follow-up-erasures``: ``--queued`` open erasure requests at CleverReach (a delete and a
  read-back each).

Reported per job and per processor: calls the sandbox answered, the flow run's wall time,
the achieved rate (calls / wall time) and its ratio to the configured rate (target ≥ 0.9),
and the rate while calling (between the first and the last token the processor's bucket
gave out: what the run's fixed cost, the Prefect run and the database work before the first
call and after the last, does not dilute), plus the checks that nothing went twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta

from bench.common import calls, job_environment, log, write_result

TARGET_RATE_RATIO = 0.9
PROCESSORS = ("cleverreach", "timify", "flexperto", "isic", "nect")


class Grants:
    """When each processor's token bucket gave out its tokens (the bench's own view).

    Wraps ``acquire`` of the process's one bucket per processor; the time a token is given
    is when its call leaves (after any wait).
    """

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def install(self) -> None:
        from connectors import transport

        original = transport.processor_limiter

        def tracked(processor: str, rate: float):
            limiter = original(processor, rate)
            if not getattr(limiter, "_bench_tracked", False):
                acquire, times = limiter.acquire, self.times.setdefault(processor, [])

                def timed_acquire() -> float:
                    waited = acquire()
                    times.append(time.perf_counter())
                    return waited

                limiter.acquire = timed_acquire  # type: ignore[method-assign]
                limiter._bench_tracked = True  # type: ignore[attr-defined]
            return limiter

        transport.processor_limiter = tracked

    def clear(self) -> None:
        for times in self.times.values():
            times.clear()

    def window(self, processor: str) -> tuple[int, float]:
        """(tokens, seconds from the first to the last) for one processor since the clear."""
        times = self.times.get(processor) or []
        return len(times), (times[-1] - times[0]) if len(times) > 1 else 0.0


def _measure(name: str, sandbox, grants: Grants, rate: float, run) -> dict:
    """Run one job's flow; its calls per processor, wall time and rates."""
    before = sandbox.state()
    grants.clear()
    started = time.perf_counter()
    state = run()
    seconds = time.perf_counter() - started
    after = sandbox.state()
    if not state.is_completed():
        raise RuntimeError(f"{name}: flow run ended {state.type.value}: {state.message}")
    per = {}
    for p in PROCESSORS:
        made = calls(after, p) - calls(before, p)
        if not made:
            continue
        tokens, window = grants.window(p)
        per[p] = {
            "calls": made,
            "calls_per_second": round(made / seconds, 1),
            "rate_ratio": round(made / seconds / rate, 3),
            "tokens": tokens,
            "calling_window_s": round(window, 2),
            "calling_rate_ratio": round((tokens - 1) / window / rate, 3) if window else None,
        }
    busiest = max(per, key=lambda p: per[p]["calls"])
    log(
        f"{name}: {seconds:.1f} s; {busiest} {per[busiest]['calls']} calls, "
        f"{per[busiest]['calls_per_second']}/s = {per[busiest]['rate_ratio']} of {rate:g}/s "
        f"(while calling {per[busiest]['calling_rate_ratio']})"
    )
    return {
        "seconds": round(seconds, 2),
        "counts": state.result(),
        "by_processor": per,
        "busiest": busiest,
        "rate_ratio": per[busiest]["rate_ratio"],
        "calling_rate_ratio": per[busiest]["calling_rate_ratio"],
    }


def _consent_lines(emails: list[str], kind: str, at) -> list[str]:
    if kind == "withdraw":
        return [
            json.dumps({"type": "consent.withdraw", "list": "newsletter", "email": e, "channel": "portal", "at": at})
            for e in emails
        ]
    lines = []
    for i, email in enumerate(emails):
        signup = {
            "type": "consent.signup",
            "list": "newsletter",
            "email": email,
            "first_name": "L",
            "last_name": f"Nr{i}",
            "ip": "192.0.2.1",
            "at": at,
            "source": "bench",
            "policy_version": "2026-01",
        }
        lines.append(json.dumps(signup))
        lines.append(
            json.dumps({"type": "consent.confirm", "list": "newsletter", "email": email, "ip": "192.0.2.2", "at": at})
        )
    return lines


def _intake(lines: list[str], now, **kwargs) -> None:
    from core.settings import get_settings
    from flows.intake import intake_lines
    from models.db import transaction

    for start in range(0, len(lines), 5000):
        with transaction() as session:
            results = intake_lines(session, get_settings().hmac_key(), lines[start : start + 5000], now=now, **kwargs)
        rejected = [r for r in results if r.outcome != "stored"]
        if rejected:
            raise RuntimeError(f"seed rejected {len(rejected)} lines, first: {rejected[0].reason}")


def run(args: argparse.Namespace) -> dict:
    import os

    import requests

    from bench.common import prefect_api
    from bench.procs import Sandbox

    with job_environment(args.keep) as (work, port), Sandbox(port, work / "sandbox.log") as sandbox:
        for p in PROCESSORS:
            os.environ[f"PSYNC_{p.upper()}_RATE_PER_SECOND"] = str(args.rate)
        os.environ.pop("PSYNC_HTTP_IN_FLIGHT", None)  # the default
        grants = Grants()
        grants.install()
        from core.settings import get_settings

        get_settings.cache_clear()
        from bench.bookings import _seed as seed_bookings
        from bench.student_id import _seed as seed_orders
        from flows.bookings import push_bookings
        from flows.erasure import follow_up_erasures, open_erasure_request
        from flows.newsletter import sync_newsletter_consents
        from flows.student_id import forward_student_id_orders
        from models.db import transaction
        from models.migrate import upgrade
        from models.types import utcnow

        upgrade()
        now = utcnow()
        log(f"seeding {args.bookings} bookings, {args.orders} orders, {args.subscribers} subscriptions")
        seed_bookings(args.bookings, now)
        seed_orders(args.orders, work / "documents")
        emails = [f"latency.{i}@example.de" for i in range(args.subscribers)]
        _intake(_consent_lines(emails, "signup", (now - timedelta(hours=2)).isoformat()), now)
        settings = get_settings()

        def faults(latency: int) -> None:
            requests.post(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": latency}, timeout=10).raise_for_status()

        faults(args.latency_ms)
        jobs: dict[str, dict] = {}
        with prefect_api():
            log(f"every answer after {args.latency_ms} ms, every processor limited to {args.rate:g} calls/s")
            jobs["bookings"] = _measure(
                "push-bookings", sandbox, grants, args.rate, lambda: push_bookings(return_state=True)
            )
            jobs["student_id"] = _measure(
                "forward-student-id-orders",
                sandbox,
                grants,
                args.rate,
                lambda: forward_student_id_orders(return_state=True),
            )
            sync = {"lists": ["newsletter"], "batch_size": args.batch_size}
            jobs["newsletter_push"] = _measure(
                "newsletter push",
                sandbox,
                grants,
                args.rate,
                lambda: sync_newsletter_consents(**sync, return_state=True),
            )
            withdrawn = emails[args.queued :]
            _intake(_consent_lines(withdrawn, "withdraw", utcnow().isoformat()), utcnow())
            jobs["newsletter_removal"] = _measure(
                "newsletter removal",
                sandbox,
                grants,
                args.rate,
                lambda: sync_newsletter_consents(**sync, return_state=True),
            )
            with transaction() as session:
                for email in emails[: args.queued]:
                    open_erasure_request(session, email=email, channel="portal")
            jobs["erasure_follow_up"] = _measure(
                "follow-up-erasures", sandbox, grants, args.rate, lambda: follow_up_erasures(return_state=True)
            )
        faults(0)
        state = sandbox.state()
    checks = {
        "appointments_created_twice": sum(1 for v in state["timify"]["creates"]["appointments"].values() if v > 1),
        "cards_created_twice": sum(1 for v in state["isic"]["creates"]["cards"].values() if v > 1),
        "cards_without_photo": sum(1 for c in state["isic"]["cards"].values() if not c.get("hasPhoto")),
        "receivers_left_at_cleverreach": sum(len(g["receivers"]) for g in state["cleverreach"]["groups"].values()),
    }
    return {
        "latency_ms": args.latency_ms,
        "rate_per_second": args.rate,
        "in_flight": settings.http_in_flight,
        "batch_size": args.batch_size,
        "items": {
            "bookings": args.bookings,
            "student_id": args.orders,
            "newsletter_push": args.subscribers,
            "newsletter_removal": args.subscribers - args.queued,
            "erasure_follow_up": args.queued,
        },
        "jobs": jobs,
        "checks": checks,
        "target": TARGET_RATE_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="each processor's calls per second (default 50)")
    parser.add_argument("--bookings", type=int, default=500)
    parser.add_argument("--orders", type=int, default=250)
    parser.add_argument("--subscribers", type=int, default=11_000)
    parser.add_argument("--queued", type=int, default=1000, help="erasure requests for follow-up-erasures")
    parser.add_argument("--batch-size", type=int, default=10, help="receivers per CleverReach call (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = parser.parse_args(argv)
    if not 0 < args.queued < args.subscribers:
        parser.error("--queued must be positive and below --subscribers")
    report = run(args)
    path = write_result("latency", report)
    for name, job in report["jobs"].items():
        print(
            f"{name:<20} {job['seconds']:>7} s  {job['busiest']:<12} rate ratio {job['rate_ratio']:.3f} "
            f"(while calling {job['calling_rate_ratio']})"
        )
    print(f"checks: {report['checks']}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
