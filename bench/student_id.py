"""``python -m bench.student_id [--orders 2000]``: forward-student-id-orders vs. a plain-requests baseline.

N student-ID orders, each with its three documents, are taken in through the real intake.
Both sides then make the same calls against the same sandbox in the same run, per order:
``cardholders.set``, ``cardholders.setPhoto`` (the decrypted photo, multipart), ``cards.list``
and ``cards.request`` (the connector lists a cardholder's cards before it requests one, since
a request is not idempotent), plus the token. The baseline has no retry layer, rate limiter,
database, audit, register or Prefect, and its photos are decrypted before the clock starts.
Reported: seconds, orders per second, the throughput ratio (ours / baseline), calls per
order on each side, Prefect task runs per order, and that every order got exactly one card
with its photo.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from bench.common import calls, cpu_of, cpu_ratio, job_environment, log, per_item, write_result

INTAKE_SLICE = 500  # orders per intake transaction


def _seed(n: int, folder) -> None:
    """N orders with their documents through the real intake (not timed)."""
    from core.settings import get_settings
    from flows.intake import intake_lines
    from models.db import transaction
    from models.types import utcnow
    from psync.demo_isic import synthetic_orders

    settings = get_settings()
    orders, _, _ = synthetic_orders(n, seed=13, folder=folder)
    for start in range(0, n, INTAKE_SLICE):
        with transaction() as session:
            results = intake_lines(
                session,
                settings.hmac_key(),
                orders[start : start + INTAKE_SLICE],
                now=utcnow(),
                base_dir=folder,
                document_key=settings.document_key_bytes(),
            )
        rejected = [r for r in results if r.outcome != "stored"]
        if rejected:
            raise RuntimeError(f"seed rejected {len(rejected)} lines, first: {rejected[0].reason}")


def _payloads() -> list[tuple[dict, bytes, str]]:
    """(cardholder body, photo bytes, media type) per order in the flow's order (seq), read with
    the flow's own queries and built as the connector builds them."""
    from sqlmodel import select

    from core.settings import get_settings
    from models.db import transaction
    from models.documents import DocumentCipher
    from models.isic import IsicOrder, sealed_photo
    from models.subjects import DataSubject

    cipher = DocumentCipher(get_settings().document_key_bytes())
    out = []
    with transaction() as session:
        rows = session.exec(
            select(IsicOrder, DataSubject)
            .join(DataSubject, DataSubject.id == IsicOrder.subject_id)
            .order_by(IsicOrder.seq)
        ).all()
        for order, subject in rows:
            body = {
                "cardholderId": order.order_ref,
                "firstName": order.first_name,
                "lastName": order.last_name,
                "dateOfBirth": order.birth_date.isoformat(),
                "email": subject.email,
                "institutionName": order.institution,
                "studentStatus": order.student_status,
            }
            sealed = sealed_photo(session, order.id)
            assert sealed is not None
            out.append((body, sealed.open(cipher), sealed.media_type))
    return out


def baseline(url: str, payloads) -> dict:
    """The same calls with one plain requests.Session; a new token when the old one runs out."""
    import requests

    from connectors.isic import PHOTO_FILENAMES
    from psync.sandbox_env import CREDENTIAL_ID, CREDENTIAL_SECRET

    root = f"{url}/isic"
    made = 0
    started = time.perf_counter()
    with requests.Session() as session:
        expires = 0.0

        def post(call: str, **kwargs) -> dict:
            nonlocal expires, made
            if time.monotonic() >= expires:  # ISIC tokens live 300 s; renewed 30 s early, as ours
                token = session.post(
                    f"{root}/auth/token",
                    json={"clientId": CREDENTIAL_ID, "clientSecret": CREDENTIAL_SECRET},
                    timeout=30,
                ).json()
                session.headers["Authorization"] = "Bearer " + token["accessToken"]
                expires = time.monotonic() + token["expiresIn"] - 30
                made += 1
            response = session.post(f"{root}/{call}", timeout=30, **kwargs)
            response.raise_for_status()
            made += 1
            return response.json()

        for body, photo, media_type in payloads:
            holder = body["cardholderId"]
            post("cardholders.set", json=body)
            post(
                "cardholders.setPhoto",
                data={"cardholderId": holder},
                files={"photo": (PHOTO_FILENAMES[media_type], photo, media_type)},
            )
            if not [c for c in post("cards.list", json={"cardholderId": holder})["cards"] if c["status"] != "VOIDED"]:
                post("cards.request", json={"cardholderId": holder, "cardType": "ISIC"})
    return {"seconds": time.perf_counter() - started, "client_calls": made}


def _issuer(state: dict, n: int) -> dict:
    """What the issuer holds: cardholders, cards made twice, cards without the photo."""
    isic = state["isic"]
    cards = isic["cards"].values()
    return {
        "cardholders": len(isic["cardholders"]),
        "cards": len(cards),
        "cards_created_twice": sum(1 for v in isic["creates"]["cards"].values() if v > 1),
        "cards_without_photo": sum(1 for c in cards if not c.get("hasPhoto")),
        "calls": calls(state, "isic"),
        "complete": len(isic["cardholders"]) == n and len(cards) == n,
    }


def run(n: int, keep: bool) -> dict:
    from bench.common import prefect_api, timed_flow
    from bench.prefect_runs import settled_task_runs
    from bench.procs import CpuMeter, Sandbox
    from flows.student_id import forward_student_id_orders
    from models.migrate import upgrade

    with job_environment(keep) as (work, port), Sandbox(port, work / "sandbox.log") as sandbox:
        upgrade()
        log(f"intake of {n} student-ID orders with their documents")
        _seed(n, work / "documents")
        payloads = _payloads()
        meter, base_cpu, ours_cpu = CpuMeter(sandbox.pid), {}, {}
        log("baseline: plain requests")
        with cpu_of(meter, base_cpu):
            base = baseline(sandbox.url, payloads)
        base_issuer = _issuer(sandbox.state(), n)
        if not base_issuer["complete"] or base_issuer["cards_created_twice"]:
            raise RuntimeError(f"baseline: {base_issuer}")
        sandbox.reset()
        with prefect_api():
            log("forward-student-id-orders")
            with cpu_of(meter, ours_cpu):
                ours = timed_flow(forward_student_id_orders)
            task_runs = settled_task_runs(ours["flow_run_id"])
        issuer = _issuer(sandbox.state(), n)
    if ours["counts"].get("forwarded") != n or not issuer["complete"]:
        raise RuntimeError(f"forwarded {ours['counts']}, issuer {issuer}")
    return {
        "orders": n,
        "baseline": {
            "seconds": round(base["seconds"], 2),
            "calls": base_issuer["calls"],
            "calls_per_order": per_item(base_issuer["calls"], n, 2),
            "orders_per_second": round(n / base["seconds"], 1),
            **base_cpu,
        },
        "forward_student_id_orders": {
            "seconds": round(ours["seconds"], 2),
            "calls": issuer["calls"],
            "calls_per_order": per_item(issuer["calls"], n, 2),
            "orders_per_second": round(n / ours["seconds"], 1),
            "counts": ours["counts"],
            "task_runs": task_runs,
            "task_runs_per_order": per_item(task_runs["total"], n),
            "expected_task_runs": math.ceil(n / 200),
            **ours_cpu,
        },
        "throughput_ratio": round(base["seconds"] / ours["seconds"], 3),
        "cpu_ratio": cpu_ratio(base_cpu["cpu_seconds"], ours_cpu["cpu_seconds"]),
        "issuer": issuer,
    }


def table(report: dict) -> str:
    b, p = report["baseline"], report["forward_student_id_orders"]
    return "\n".join(
        [
            f"{report['orders']} student-ID orders against the sandbox",
            f"{'':<28}{'seconds':>9}{'orders/s':>10}{'calls':>8}{'calls/order':>13}",
            f"{'baseline':<28}{b['seconds']:>9}{b['orders_per_second']:>10}{b['calls']:>8}{b['calls_per_order']:>13}",
            f"{'forward-student-id-orders':<28}{p['seconds']:>9}{p['orders_per_second']:>10}{p['calls']:>8}{p['calls_per_order']:>13}",
            (
                f"throughput ratio (ours / baseline): {report['throughput_ratio']} (by CPU time {report['cpu_ratio']}); "
                f"task runs: {p['task_runs']['total']} "
                f"({p['task_runs_per_order']} per order); cards created twice: {report['issuer']['cards_created_twice']}, "
                f"without photo: {report['issuer']['cards_without_photo']}"
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.student_id", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000, help="orders (default 2000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, documents, logs)")
    args = parser.parse_args(argv)
    if args.orders < 1:
        parser.error("--orders must be positive")
    report = run(args.orders, args.keep)
    path = write_result("student_id", report)
    print(table(report))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
