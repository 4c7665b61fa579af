"""``psync erasure …``: the data-protection officer's commands (Art. 17, 19 GDPR).

Identifiers given here open the request in the database; the flow is then started with the
request id only, so no e-mail address lands in Prefect's stored parameters. Errors print
their message (never the input) and exit 1.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from psync.cli_errors import clear_errors, flow_failures_said_once, in_session
from psync.cli_requests import (
    ChannelOption,
    EmailOption,
    InsuranceOption,
    ReceivedOption,
    ReferenceOption,
    RequestChannel,
    SubjectOption,
    add_extend,
    berlin,
)

app = typer.Typer(help="Erasure requests: open, follow, confirm manual tasks, report, extend.")


class ReportFormat(StrEnum):
    md = "md"
    json = "json"


@app.command("request")
def request(
    email: EmailOption = None,
    insurance_number: InsuranceOption = None,
    subject_id: SubjectOption = None,
    received_at: ReceivedOption = None,
    channel: ChannelOption = RequestChannel.email,
    reference: ReferenceOption = "",
    fan_out: Annotated[bool, typer.Option(help="start the fan-out right away")] = True,
) -> None:
    """Open an erasure request (or join the subject's open one) and fan it out."""
    from flows.erasure import fan_out_erasure, open_erasure_request

    received_at = berlin(received_at)
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


def _extend_request(*args: Any) -> Any:
    from flows.erasure import extend_request

    return extend_request(*args)


add_extend(app, _extend_request)
