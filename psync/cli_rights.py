"""``psync request …``: the data-protection officer's commands for data-subject rights
(Art. 15, 16, 18, 20, 21 GDPR; erasure has ``psync erasure``).

``psync request access --email …`` opens the request in the database (or joins the person's
open one for the same right) and answers it at once with the ``handle-rights-request`` flow,
started with the request id only, so no e-mail address lands in Prefect's stored parameters.
``list`` shows requests with their deadlines, ``extend`` extends one (Art. 12(3)), ``show``
decrypts what was written to the outbox for the person. Errors print their message (never
the input) and exit 1.

Another right's command is added with ``request_command(Right.x, help)`` (the identifiers,
receipt, channel and reference are the same for every right) or, with more options, by
calling ``open_and_answer``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
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

app = typer.Typer(help="Data-subject requests (access, portability, …): open and answer, list, extend, show.")


class Status(StrEnum):
    open = "open"
    completed = "completed"
    all = "all"


AnswerOption = Annotated[bool, typer.Option(help="answer it right away (else the follow-up does)")]


def open_and_answer(
    right: str,
    *,
    email: str | None,
    insurance_number: str | None,
    subject_id: str | None,
    received_at: datetime | None,
    channel: str,
    reference: str,
    changes: Mapping[str, Any] | None = None,
    answer: bool = True,
) -> None:
    """Open the request (or join the open one), print its id, and answer it with the flow."""
    from flows.rights import handle_rights_request, open_request

    received_at = berlin(received_at)
    opened = in_session(
        lambda s: (
            open_request(
                s,
                right=right,
                email=email,
                insurance_number=insurance_number,
                subject_id=subject_id,
                received_at=received_at,
                channel=channel,
                reference=reference,
                changes=changes,
            ).id
        )
    )
    typer.echo(f"request {opened}")
    if answer:
        with clear_errors(), flow_failures_said_once():
            counts = handle_rights_request(request_id=str(opened))
        typer.echo(json.dumps(counts, sort_keys=True))
        _print_outbox(str(opened))


def _print_outbox(request_id: str) -> None:
    from flows.rights import outbox_files

    for path in outbox_files(request_id):
        typer.echo(f"written (encrypted): {path}")


def request_command(right: str, help_text: str) -> Callable[..., None]:
    """Add ``psync request <right>`` with the options every right shares."""

    def command(
        email: EmailOption = None,
        insurance_number: InsuranceOption = None,
        subject_id: SubjectOption = None,
        received_at: ReceivedOption = None,
        channel: ChannelOption = RequestChannel.email,
        reference: ReferenceOption = "",
        answer: AnswerOption = True,
    ) -> None:
        open_and_answer(
            right,
            email=email,
            insurance_number=insurance_number,
            subject_id=subject_id,
            received_at=received_at,
            channel=channel.value,
            reference=reference,
            answer=answer,
        )

    command.__doc__ = help_text
    app.command(right)(command)
    return command


request_command("access", "Access (Art. 15): the package of everything held, read back at every processor.")
request_command("portability", "Portability (Art. 20): the data the person provided, as JSON and CSV.")
request_command(
    "restriction",
    "Restriction (Art. 18): no job sends anything new of the person; inactive where the API can, letters elsewhere.",
)
request_command(
    "objection",
    "Objection / withdrawal of everything (Art. 21, 7(3)): every consent withdrawn, removed at CleverReach.",
)


@app.command("rectification")
def rectification(
    email: EmailOption = None,
    insurance_number: InsuranceOption = None,
    subject_id: SubjectOption = None,
    received_at: ReceivedOption = None,
    channel: ChannelOption = RequestChannel.email,
    reference: ReferenceOption = "",
    answer: AnswerOption = True,
    new_email: Annotated[str | None, typer.Option(help="the corrected e-mail address")] = None,
    new_first_name: Annotated[str | None, typer.Option(help="the corrected first name")] = None,
    new_last_name: Annotated[str | None, typer.Option(help="the corrected last name")] = None,
    new_phone: Annotated[str | None, typer.Option(help="the corrected phone number")] = None,
    new_birth_date: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="the corrected birth date (YYYY-MM-DD)")
    ] = None,
) -> None:
    """Rectification (Art. 16, 19): corrected at every processor that holds it (read back), then here."""
    changes = {
        "email": new_email,
        "first_name": new_first_name,
        "last_name": new_last_name,
        "phone": new_phone,
        "birth_date": new_birth_date.date() if new_birth_date else None,
    }
    from models.rights import checked_changes

    given = {name: value for name, value in changes.items() if value is not None}
    try:  # a bad new value is a bad parameter (exit 2), found before anything is opened
        checked_changes(given)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    open_and_answer(
        "rectification",
        email=email,
        insurance_number=insurance_number,
        subject_id=subject_id,
        received_at=received_at,
        channel=channel.value,
        reference=reference,
        changes=given,
        answer=answer,
    )


@app.command("lift")
def lift(
    reason: Annotated[str, typer.Option(help="why the restriction ends (no personal data)")],
    informed_on: Annotated[
        datetime,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="the day (Berlin, YYYY-MM-DD) the person was told the restriction will be lifted (Art. 18(3))",
        ),
    ],
    email: EmailOption = None,
    insurance_number: InsuranceOption = None,
    subject_id: SubjectOption = None,
    lifted_at: Annotated[datetime | None, typer.Option(help="when it ends, Berlin time (default: now)")] = None,
) -> None:
    """Lift a restriction (Art. 18(3)), once the person was told (--informed-on: not in the
    future, not before the restriction began): reactivated where it was deactivated, letters
    to the others, the records held back meanwhile go to the jobs' retry queue. Prints the
    Art. 19 report; the letters are written (encrypted) to the outbox: ``psync request show
    lift-ID``. A missing or impossible --informed-on exits 2 and changes nothing."""
    from core.settings import get_settings
    from flows.amend import lift_restriction
    from flows.rights import write_outbox
    from models.erasure import find_subject
    from models.restriction import InformedOnError

    key = get_settings().hmac_key()
    found = in_session(
        lambda s: find_subject(s, email=email, insurance_number=insurance_number, subject_id=subject_id, key=key).id
    )
    lifted_at = berlin(lifted_at)
    with clear_errors():
        try:
            result = lift_restriction(found, reason_text=reason, informed_on=informed_on.date(), lifted_at=lifted_at)
        except InformedOnError as exc:  # checked before any call: nothing changed
            raise typer.BadParameter(str(exc), param_hint="'--informed-on'") from None
        if not result.complete:
            failed = sorted({t.processor for t in result.told if t.outcome == "failed"})
            typer.echo(
                f"error: restriction not lifted: reactivation failed at {', '.join(failed)}; run again", err=True
            )
            raise typer.Exit(1)
        name = f"lift-{result.ref}"
        files = {f"letter-{n.replace(' ', '-').replace(':', '_')}.txt": t.encode() for n, t in result.letters.items()}
        files["art19-report.json"] = json.dumps(result.report(), indent=2, ensure_ascii=False).encode()
        write_outbox(name, files)
    typer.echo(json.dumps(result.report(), indent=2, ensure_ascii=False))
    _print_outbox(name)


@app.command("list")
def list_requests(
    status: Annotated[Status, typer.Option(help="which requests")] = Status.open,
    right: Annotated[str | None, typer.Option(help="only this right")] = None,
) -> None:
    """Requests with their right, status, deadline, outcome, channel and reference (no
    personal data: a reference is checked when the request is opened). The reference is
    how the officer finds the sender of a request kept for an address nobody has."""
    from sqlmodel import col, select

    from models.deadlines import received_day
    from models.rights import RightsRequest

    def work(session):
        query = select(RightsRequest).order_by(col(RightsRequest.due), col(RightsRequest.received_at))
        if status is not Status.all:
            query = query.where(RightsRequest.status == status.value)
        if right:
            query = query.where(RightsRequest.right == right)
        return [
            (
                str(r.id),
                r.right,
                r.status,
                received_day(r.received_at).isoformat(),  # the Berlin day its deadline counts from
                r.due.isoformat(),
                r.urgency,
                r.outcome or r.detail,
                r.channel,
                r.reference,
            )
            for r in session.exec(query)
        ]

    rows = in_session(work)
    if not rows:
        typer.echo("no requests")
        return
    typer.echo("id\tright\tstatus\treceived\tdue\turgency\toutcome\tchannel\treference")
    for row in rows:
        typer.echo("\t".join(row))


def _extend_request(*args: Any) -> Any:
    from flows.rights import extend_request

    return extend_request(*args)


add_extend(app, _extend_request)


@app.command("show")
def show(
    request_id: str,
    file: Annotated[str, typer.Option(help="which file of the package, e.g. access.html")] = "",
    out: Annotated[Path | None, typer.Option(help="write it here instead of printing")] = None,
) -> None:
    """List the files written for the person, or decrypt one (to print or to hand over)."""
    from flows.rights import ENCRYPTED_SUFFIX, outbox_files, read_outbox

    with clear_errors():
        files = {p.name.removesuffix(ENCRYPTED_SUFFIX): p for p in outbox_files(request_id)}
        if not files:
            raise LookupError("nothing in the outbox for this request (not answered, or deleted after its days)")
        if not file:
            for name in sorted(files):
                typer.echo(name)
            return
        if file not in files:
            raise LookupError(f"no file {file!r} for this request; there are: {', '.join(sorted(files))}")
        content = read_outbox(files[file])
    if out is not None:
        out.write_bytes(content)
        out.chmod(0o600)
        typer.echo(f"written: {out}")
    else:
        sys.stdout.buffer.write(content)
