"""``psync erasure …``: the data-protection officer's commands (Art. 17, 19 GDPR).

Identifiers given here open the request in the database; the flow is then started with the
request id only, so no e-mail address lands in Prefect's stored parameters. Errors print
their message (never the input) and exit 1.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated

import typer

from psync.cli_errors import clear_errors, flow_failures_said_once, in_session

app = typer.Typer(help="Erasure requests: open, follow, confirm manual tasks, report, extend.")


class ReportFormat(StrEnum):
    md = "md"
    json = "json"


class RequestChannel(StrEnum):
    letter = "letter"
    email = "email"
    portal = "portal"
    phone = "phone"


@app.command("request")
def request(
    email: Annotated[str | None, typer.Option(help="the subject's e-mail address")] = None,
    insurance_number: Annotated[str | None, typer.Option(help="the subject's health-insurance number")] = None,
    subject_id: Annotated[str | None, typer.Option(help="our subject id")] = None,
    received_at: Annotated[datetime | None, typer.Option(help="when it reached us (default: now)")] = None,
    channel: Annotated[RequestChannel, typer.Option()] = RequestChannel.email,
    reference: Annotated[str, typer.Option(help="file number; no personal data")] = "",
    fan_out: Annotated[bool, typer.Option(help="start the fan-out right away")] = True,
) -> None:
    """Open an erasure request (or join the subject's open one) and fan it out."""
    from flows.erasure import fan_out_erasure, open_erasure_request
    from models.types import BERLIN

    if received_at is not None and received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=BERLIN)  # a date typed in Germany
    opened = in_session(
        lambda s: (
            open_erasure_request(
                s,
                email=email,
                insurance_number=insurance_number,
                subject_id=subject_id,
                received_at=received_at,
                channel=channel.value,
                reference=reference,
            ).id
        )
    )
    typer.echo(f"request {opened}")
    if fan_out:
        with clear_errors(), flow_failures_said_once():
            counts = fan_out_erasure(request_id=str(opened))
        typer.echo(json.dumps(counts, sort_keys=True))


@app.command("status")
def status(request_id: str) -> None:
    """The request's state per recipient, and the text of any manual request to send."""
    from flows.erasure import manual_requests, render_markdown, report

    def work(session):
        return render_markdown(report(session, request_id)), manual_requests(session, request_id)

    text, manual = in_session(work)
    typer.echo(text)
    for item in manual:  # printed for the officer, never logged
        typer.echo(f"\n--- manual request, task {item['task_id']} ---\n{item['text']}")


@app.command("confirm")
def confirm(
    task_id: str,
    evidence: Annotated[str, typer.Option(help="what shows the erasure, e.g. the processor's letter of 3 May")],
) -> None:
    """Confirm a manual processor's erasure with evidence (recorded in the audit trail)."""
    from flows.erasure import confirm_manual
    from models.db import scrub_journal
    from models.types import utcnow

    state = in_session(lambda s: confirm_manual(s, task_id, evidence, utcnow()).state)
    scrub_journal()  # the last confirmation may have erased the controller's copy
    typer.echo(f"task {task_id}: {state}")


@app.command("report")
def report_cmd(
    request_id: str,
    format: Annotated[ReportFormat, typer.Option("--format", "-f")] = ReportFormat.md,
) -> None:
    """The Art. 19 report: every recipient, what was done there and when, how verified."""
    from flows.erasure import render_markdown, report

    data = in_session(lambda s: report(s, request_id))
    typer.echo(render_markdown(data) if format is ReportFormat.md else json.dumps(data, indent=2))


@app.command("extend")
def extend(
    request_id: str,
    months: Annotated[int, typer.Option(min=1, max=2)],
    reason: Annotated[str, typer.Option(help="why more time is necessary (no personal data)")],
    informed_on: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="when the subject was told")],
) -> None:
    """Extend the deadline by up to two months (Art. 12(3)); only within the first month."""
    from core.clock import berlin_today
    from flows.erasure import extend_request
    from models.types import utcnow

    due = in_session(
        lambda s: (
            extend_request(
                s,
                request_id,
                months,
                reason,
                informed_on.date(),
                berlin_today(utcnow()),
            ).due
        )
    )
    typer.echo(f"request {request_id} now due {due.isoformat() if isinstance(due, date) else due}")
