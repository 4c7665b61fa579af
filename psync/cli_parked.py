"""``psync parked …``: the records a job could not deliver, for the on-call engineer.

A record that failed for good (a 4xx other than auth, our own validation) is parked with its
reason; one that failed for a retriable reason waits for the job's next run, which tries it
first. Ids, processors and reasons only: nothing personal is shown or asked for.
"""

from __future__ import annotations

from typing import Annotated

import typer

from psync.cli_errors import in_session

app = typer.Typer(help="Parked records: list, retry, drop.")


@app.command("list")
def list_cmd(job: Annotated[str | None, typer.Option(help="only this job, e.g. push-bookings")] = None) -> None:
    """Every parked or to-retry record: id, job, record, processor, operation, attempts, reason."""
    from models.parked import open_items
    from models.types import berlin_text

    def rows(session):
        return [
            (
                str(i.id),
                i.job,
                i.record_id,
                i.state,
                i.processor or "-",
                i.operation or "-",
                i.attempts,
                berlin_text(i.first_tried_at),
                berlin_text(i.last_tried_at),
                i.reason,
            )
            for i in open_items(session, job)
        ]

    found = in_session(rows)
    if not found:
        typer.echo("nothing parked")
        return
    typer.echo("id\tjob\trecord\tstate\tprocessor\toperation\tattempts\tfirst tried\tlast tried\treason")
    for row in found:
        typer.echo("\t".join(map(str, row)))


@app.command("retry")
def retry_cmd(item_id: str) -> None:
    """Try a parked record again: the job's next run takes it first."""
    from flows.delivery import retry_parked

    record = in_session(lambda s: retry_parked(s, item_id).record_id)
    typer.echo(f"{record}: retried by the next run")


@app.command("drop")
def drop_cmd(
    item_id: str,
    reason: Annotated[str, typer.Option(help="why it is not to be delivered (no personal data)")],
) -> None:
    """Give up on a parked record, with the reason (audited)."""
    from flows.delivery import drop_parked
    from models.types import utcnow

    record = in_session(lambda s: drop_parked(s, item_id, reason, utcnow()).record_id)
    typer.echo(f"{record}: dropped")
