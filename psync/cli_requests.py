"""What the commands for data-subject requests share (``psync erasure``, ``psync request``):
the channel a request came by, the options naming the subject, the Berlin reading of a time
typed in, and the deadline's extension (Art. 12(3))."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from psync.cli_errors import in_session


class RequestChannel(StrEnum):
    letter = "letter"
    email = "email"
    portal = "portal"
    phone = "phone"


def checked_email(value: str | None) -> str | None:
    """An e-mail option checked at the door: a malformed address is a bad parameter (exit 2,
    the address not repeated), as a malformed date or channel is."""
    if value is None:
        return None
    from models.identity import normalise_email

    try:
        normalise_email(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


EmailOption = Annotated[str | None, typer.Option(help="the subject's e-mail address", callback=checked_email)]
InsuranceOption = Annotated[str | None, typer.Option(help="the subject's health-insurance number")]
SubjectOption = Annotated[str | None, typer.Option(help="our subject id")]
ReceivedOption = Annotated[datetime | None, typer.Option(help="when it reached us, Berlin time (default: now)")]
ChannelOption = Annotated[RequestChannel, typer.Option(help="how it reached us")]
ReferenceOption = Annotated[str, typer.Option(help="file number; no personal data")]


def berlin(moment: datetime | None) -> datetime | None:
    """A time typed without a zone read as Berlin time (it was typed in Germany)."""
    from models.types import BERLIN

    return moment.replace(tzinfo=BERLIN) if moment is not None and moment.tzinfo is None else moment


def add_extend(app: typer.Typer, extend_request: Callable[..., Any]) -> None:
    """Register ``extend`` on `app`: the deadline of a request moved by up to two months,
    through `extend_request(session, id, months, reason, informed_on, today)`."""

    @app.command("extend")
    def extend(
        request_id: str,
        months: Annotated[int, typer.Option(min=1, max=2)],
        reason: Annotated[str, typer.Option(help="why more time is necessary (no personal data)")],
        informed_on: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="when the subject was told")],
    ) -> None:
        """Extend the deadline by up to two months (Art. 12(3)); only within the first month."""
        from core.clock import berlin_today
        from models.types import utcnow

        due = in_session(
            lambda s: extend_request(s, request_id, months, reason, informed_on.date(), berlin_today(utcnow())).due
        )
        typer.echo(f"request {request_id} now due {due.isoformat()}")
