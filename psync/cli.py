"""``psync``: the command line of processor-sync."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from contextlib import nullcontext
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from psync.cli_catalogue import docs_app, retention_app
from psync.cli_consent import app as consent_app
from psync.cli_erasure import app as erasure_app
from psync.cli_errors import PsyncGroup, flow_failures_said_once
from psync.cli_parked import app as parked_app
from psync.cli_rights import app as rights_app

app = typer.Typer(
    cls=PsyncGroup,
    help="processor-sync: keep processors in line with data subjects' decisions. "
    "Exit codes: 0 ok, 1 records rejected or a job failed, 2 usage or configuration.",
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.")
audit_app = typer.Typer(help="The audit trail.")
documents_app = typer.Typer(help="Uploaded documents at rest.")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.add_typer(documents_app, name="documents")
app.add_typer(erasure_app, name="erasure")
app.add_typer(parked_app, name="parked")
app.add_typer(rights_app, name="request")
app.add_typer(docs_app, name="docs")
app.add_typer(retention_app, name="retention")
app.add_typer(consent_app, name="consent")


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="print a failure's traceback (also PSYNC_DEBUG=1)")] = False,
) -> None:
    # --debug is taken off the command line by PsyncGroup.main wherever it stands; this
    # declaration puts it in --help.
    del debug


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the Alembic migrations to PSYNC_DATABASE_URL."""
    from models.migrate import upgrade

    upgrade(revision=revision)
    typer.echo(f"database at {revision}")


@documents_app.command("rotate-key")
def documents_rotate_key() -> None:
    """Put every document's data key (and the phone passwords) under the newest master key.

    Set PSYNC_DOCUMENT_KEY=NEW,OLD, run this, then drop OLD. Documents are not rewritten,
    except those stored before data keys existed, which get one now.
    """
    from core.settings import get_settings
    from models.db import transaction
    from models.documents import DocumentCipher
    from models.isic import rotate_document_keys

    try:
        cipher = DocumentCipher(get_settings().document_key_bytes())
        with transaction() as session:
            counts = rotate_document_keys(session, cipher)
    except ValueError as exc:  # a key that is none, or a token no configured key opens
        typer.echo(f"rotate-key failed, nothing changed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


@db_app.command("compact")
def db_compact() -> None:
    """Rewrite the tables that hold personal data (and the document keys), so erased values
    leave the database's files: VACUUM FULL on PostgreSQL (each table locked, reads and writes
    wait, while it is rewritten), VACUUM on SQLite. Run after the day's erasures, off-peak."""
    from models.db import compact
    from models.documents import DocumentKey
    from models.erasure import personal_tables

    tables = [table.name for table, _ in personal_tables()] + [DocumentKey.__tablename__]
    for name, seconds in compact(tables).items():
        typer.echo(f"{name}: {seconds:.3f} s")


@app.command()
def intake(
    file: Annotated[
        Path | None, typer.Argument(help="JSON-lines file of events", exists=True, dir_okay=False, readable=True)
    ] = None,
    schema: Annotated[bool, typer.Option("--schema", help="print the JSON Schema")] = False,
    remove_documents: Annotated[
        bool,
        typer.Option(
            "--remove-documents",
            help="once the file is in, remove the uploads its orders name (kept where a line naming one was rejected)",
        ),
    ] = False,
) -> None:
    """Validate and store the website's events; exits 1 when any line was rejected (or a
    document to remove could not be).

    A chunk of lines at a time, each in a transaction of its own: a rejected line is
    reported (with its number) once its chunk has committed, so after a crash what was
    reported stored is stored, and running the same file again stores only the rest.
    Student-ID orders' uploads are stored encrypted; the plaintext files stay next to the
    file unless `--remove-documents` (``flows.intake.Uploads``).
    """
    from flows.intake import Uploads, import_lines
    from intake.lines import OUTCOMES, json_schema

    if schema:
        typer.echo(json.dumps(json_schema(), indent=2))
        return
    if file is None:
        raise typer.BadParameter("give a FILE.jsonl (or --schema)")
    from core.settings import get_settings
    from models.types import utcnow

    settings = get_settings()
    counts: Counter[str] = Counter()
    folder = file.resolve().parent
    uploads = Uploads(folder)
    # Binary: a line in the wrong encoding is rejected alone instead of failing the file.
    with file.open("rb") as lines:
        chunks = import_lines(
            settings.hmac_key(),
            uploads.watch(lines),
            now=utcnow(),
            service_points=settings.timify.service_points,
            base_dir=folder,
            document_key=settings.document_key_bytes(),
            max_document_bytes=settings.isic.max_document_bytes,
        )
        for results in chunks:
            uploads.settle(results)
            counts.update(r.outcome for r in results)
            for r in results:
                if r.outcome == "rejected":
                    typer.echo(f"{file.name}:{r.line}: rejected: {r.reason}", err=True)
    summary = " ".join(f"{k}={counts.get(k, 0)}" for k in OUTCOMES)
    failed = 0
    if remove_documents:
        removed, failed = uploads.remove()
        summary += f" documents_removed={removed}"
        if failed:
            typer.echo(f"{failed} document(s) could not be removed (a folder, or no permission)", err=True)
    elif uploads.left:
        # Plaintext ID copies next to the file outlive any erasure here: say so.
        typer.echo(
            f"note: {uploads.left} uploaded document(s) of orders now stored encrypted are still in "
            "the file's folder, unencrypted; remove them, or import with --remove-documents",
            err=True,
        )
    typer.echo(summary)
    raise typer.Exit(1 if counts.get("rejected") or failed else 0)


@app.command("run")
def run_flow(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="flow name, e.g. sync-newsletter-consents")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value (JSON values allowed)")] = None,
) -> None:
    """Run a flow: on the resident runner when `psync up` started one (psync/runner.py), else
    in this process (ephemeral Prefect unless PREFECT_API_URL is set)."""
    params = _parse_params(param or [])  # a malformed -p is refused here, before anything runs
    code = _on_resident_runner(ctx, name, param or [])
    if code is not None:
        raise typer.Exit(code)
    from prefect.settings import temporary_settings

    from flows.registry import get_flow

    try:
        flow = get_flow(name)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None
    _check_params(flow, params)
    changes = _without_heartbeats()
    # Settings copied only when they change: a copy costs about 0.1 s (the resident runner
    # has them off for good).
    with flow_failures_said_once(), temporary_settings(changes) if changes else nullcontext():
        result = flow(**params)
    typer.echo(json.dumps(result, default=str, sort_keys=True))


def _parse_params(items: list[str]) -> dict:
    """``-p key=value`` pairs as flow parameters (a value that is JSON as JSON, else text)."""
    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param {key!r}: expected key=value")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _check_params(flow, params: dict) -> None:
    """Refuse parameters the flow does not take, or of the wrong type, before a flow run is
    made (Prefect would make one and fail it): one line naming the parameter, exit 2."""
    import logging

    from prefect.exceptions import ParameterBindError, ParameterTypeError, SignatureMismatchError

    # Prefect logs the rejected values at ERROR as well; the line below says it once.
    quiet = logging.getLogger("prefect.flows")
    drop = logging.Filter("nothing")  # passes no record
    quiet.addFilter(drop)
    try:
        flow.validate_parameters(params)
    except ParameterTypeError as exc:
        # "Flow run received invalid parameters:\n - NAME: WHY" (pydantic's text; no value)
        problems = [line.strip().removeprefix("- ") for line in str(exc).splitlines()[1:] if line.strip()]
        raise typer.BadParameter(f"--param {'; '.join(problems) or 'invalid'}") from None
    except (ParameterBindError, SignatureMismatchError) as exc:
        # names only: "Function expects parameters [...] but was provided with parameters [...]"
        raise typer.BadParameter(f"--param: {flow.name}: {str(exc).splitlines()[0]}") from None
    finally:
        quiet.removeFilter(drop)


def _on_resident_runner(ctx: typer.Context, name: str, items: list[str]) -> int | None:
    """The exit code of the run on the resident runner, its output already written; None
    when there is none for this caller (then the run happens here). Imports no Prefect."""
    from core.settings import get_settings
    from psync.cli_errors import debugging
    from psync.runner import RunnerGone, ask

    settings = get_settings()
    argv = [name, *(a for item in items for a in ("--param", item))]
    try:
        return ask(
            argv,
            prog=ctx.find_root().info_name or "psync",
            debug=debugging(),
            socket_path=settings.runner_socket,
            database_url=settings.database_url,
        )
    except RunnerGone as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1


def _without_heartbeats() -> dict:
    """Prefect's flow-run heartbeats off for a run started here, unless the environment sets
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``.

    The heartbeat thread sleeps in one-second steps and the run waits for it at its end: up
    to a second on every run, most of a run with nothing to do. Heartbeats only serve a
    server-side automation that marks a silent run crashed, which this project does not
    set up; a run started by hand is watched by whoever started it, and a worker's runs
    (``make up``) keep Prefect's default.
    """
    import os

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ or PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None:
        return {}
    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


class ExportFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain, and the trail against the latest anchor (PSYNC_AUDIT_ANCHOR);
    exits 1 and names the first bad row, or the tampering, when it is broken."""
    from core.settings import get_settings
    from models.audit import latest_anchor, verify_against
    from models.db import transaction

    settings = get_settings()
    key = settings.hmac_key()
    found = []
    try:
        if settings.audit_anchor is not None:
            found.append(latest_anchor(settings.audit_anchor, key))
        if settings.audit_anchor_artifact:
            from flows.common import artifact_anchor

            found.append(artifact_anchor(key))
    except ValueError as exc:
        typer.echo(f"audit anchor BROKEN: {exc}", err=True)
        raise typer.Exit(1) from None
    anchors = [a for a in found if a is not None]
    anchor = max(anchors, key=lambda a: a.rows) if anchors else None
    with transaction() as session:
        result = verify_against(session, key, anchor)
    if result.ok:
        typer.echo(f"audit trail intact: {result.checked} rows")
        if not found:
            # On stderr: stdout stays the one line a script reads.
            typer.echo(
                "no audit anchor configured (PSYNC_AUDIT_ANCHOR): a wiped trail, or one "
                "truncated with an older head put back, cannot be told from a younger one",
                err=True,
            )
        elif anchor is None:
            typer.echo("no audit anchor written yet (one is written at the end of each flow run)")
        else:
            typer.echo(f"matches the audit anchor of {anchor.at.isoformat()} ({anchor.rows} rows)")
        return
    where = f" at row {result.bad_id}" if result.bad_id is not None else ""
    typer.echo(f"audit trail BROKEN{where}: {result.reason} ({result.checked} rows verified before it)", err=True)
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    format: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.jsonl,
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Write the audit trail as CSV or JSON lines (stdout by default)."""
    from models.audit import FIELDS, export_rows
    from models.db import transaction

    out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        with transaction() as session:
            if format is ExportFormat.csv:
                writer = csv.DictWriter(out, fieldnames=[*FIELDS, "prev_hash", "hash"])
                writer.writeheader()
                writer.writerows(export_rows(session))
            else:
                for row in export_rows(session):
                    out.write(json.dumps(row) + "\n")
    finally:
        if output:
            out.close()


@app.command()
def check(
    connect: Annotated[
        bool, typer.Option("--connect", help="also fetch a token and look the configured ids up")
    ] = False,
) -> None:
    """Per processor: what is configured, what is missing (by variable); exit 2 if a job cannot run."""
    from core.settings import get_settings
    from psync.check import check as run_check
    from psync.check import render

    report = run_check(get_settings(), connect=connect)
    typer.echo(render(report))
    raise typer.Exit(0 if report.ok else 2)


@app.command()
def sandbox(
    host: str = "127.0.0.1",
    port: int = 8700,
    fault_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    latency_ms: Annotated[int, typer.Option(min=0)] = 0,
    seed: int | None = None,
    print_env: Annotated[
        bool, typer.Option("--print-env", help="print the export lines that point psync at this sandbox, and exit")
    ] = False,
) -> None:
    """Serve the local imitation of the processors' APIs (in-memory)."""
    if print_env:
        import shlex

        from psync.sandbox_env import sandbox_environment

        for name, value in sandbox_environment(f"http://{host}:{port}", rate_per_second=50).items():
            typer.echo(f"export {name}={shlex.quote(value)}")
        return
    from sandbox.app import serve

    serve(host=host, port=port, fault_rate=fault_rate, latency_ms=latency_ms, seed=seed)


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8710,
) -> None:
    """Serve the website's signed HTTP intake (POST /v1/events; needs PSYNC_INTAKE_SECRET)."""
    from core.settings import get_settings
    from psync.serve import DoorConfig
    from psync.serve import serve as serve_door

    try:
        config = DoorConfig.from_settings(get_settings())
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    serve_door(host=host, port=port, config=config)


STACK_STATE = Path(".psync/stack")


@app.command()
def runner(
    socket_path: Annotated[Path, typer.Option("--socket", help="the unix socket to listen at")] = STACK_STATE
    / "runner.sock",
) -> None:
    """Run flows for `psync run` in this process, which imports them once (`psync up` starts
    one; stopped by SIGTERM). One run at a time, over a unix socket only this user can open."""
    from typer.main import get_command

    from psync.runner import serve as serve_runner

    serve_runner(socket_path.resolve(), get_command(app))


@app.command()
def up(
    api_port: Annotated[int, typer.Option(min=1, max=65535)] = 4200,
    sandbox_port: Annotated[int, typer.Option(min=1, max=65535)] = 8700,
    intake_port: Annotated[int, typer.Option(min=1, max=65535, help="the HTTP intake (psync serve)")] = 8710,
) -> None:
    """Start a local Prefect server (UI), the sandbox, the work pool, every deployment, a
    worker and the HTTP intake in the background; `psync down` stops them."""
    from psync.stack import Stack

    try:
        Stack(Path.cwd(), STACK_STATE, api_port=api_port, sandbox_port=sandbox_port, intake_port=intake_port).up()
    except RuntimeError as exc:
        typer.echo(f"error: up: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def down() -> None:
    """Stop what `psync up` started."""
    from psync.stack import Stack

    if not Stack(Path.cwd(), STACK_STATE).down():
        typer.echo("down: nothing was running")


@app.command()
def demo(
    subjects: Annotated[int, typer.Option(min=10)] = 3000,
    bookings: Annotated[int, typer.Option(min=10)] = 300,
    seed: int = 7,
) -> None:
    """Run the jobs end to end against a local sandbox on a fresh SQLite file."""
    from psync.demo import run_demo

    raise typer.Exit(run_demo(subjects=subjects, seed=seed, bookings=bookings))


if __name__ == "__main__":
    app()
