"""``psync consent …``: proof of consent and the consent texts it prints (issue 18, part 6).

The proof is printed for the officer (stdout, or files the officer names) and never logged;
every proof made leaves an audit row naming the person by pseudonym only. Errors print
their message (never the input) and exit 1.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from psync.cli_errors import in_session
from psync.cli_requests import checked_email

app = typer.Typer(help="Proof of consent, and the consent texts by policy version.")
texts_app = typer.Typer(help="The consent texts and confirmation mails, by policy version (immutable).")
app.add_typer(texts_app, name="texts")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{what} is not UTF-8 text") from None
    except OSError as exc:
        raise typer.BadParameter(f"{what} cannot be read ({exc.strerror})") from None


@texts_app.command("add")
def texts_add(
    version: Annotated[str, typer.Option("--version", help="the policy version sign-ups name, e.g. 2026-02")],
    consent_file: Annotated[Path, typer.Option(help="the consent text shown at sign-up (UTF-8)")],
    mail_file: Annotated[Path, typer.Option(help="the double-opt-in confirmation mail (UTF-8)")],
    effective_from: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="the day it took effect (default: today, Berlin)")
    ] = None,
) -> None:
    """Register a version's texts; the same texts again change nothing, other texts are refused."""
    from core.clock import berlin_today
    from flows.consent_proof import register_text
    from models.types import utcnow

    consent = _read_text(consent_file, "--consent-file")
    mail = _read_text(mail_file, "--mail-file")
    day = effective_from.date() if effective_from else berlin_today(utcnow())
    created = in_session(lambda s: register_text(s, version, consent, mail, day))
    typer.echo(f"version {version.strip()}: {'registered' if created else 'already registered with these texts'}")


@texts_app.command("list")
def texts_list(
    as_json: Annotated[bool, typer.Option("--json", help="as JSON lines")] = False,
) -> None:
    """Every registered version: when it took effect, when registered, the texts' SHA-256."""
    from models.consent_text import all_texts

    rows = in_session(
        lambda s: [
            {
                "version": t.version,
                "effective_from": t.effective_from.isoformat(),
                "registered_at": t.registered_at.isoformat(),
                "consent_sha256": t.consent_sha256,
                "mail_sha256": t.mail_sha256,
            }
            for t in all_texts(s)
        ]
    )
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(
                f"{row['version']}\tab {row['effective_from']}\tconsent {row['consent_sha256'][:16]}…"
                f"\tmail {row['mail_sha256'][:16]}…"
            )


@texts_app.command("show")
def texts_show(version: str) -> None:
    """A version's two texts, as registered."""
    from models.consent_text import texts_of

    found = in_session(lambda s: {v: (t.consent_text, t.mail_text) for v, t in texts_of(s, [version]).items()})
    if version not in found:
        raise LookupError("no consent text is registered under this version")
    consent, mail = found[version]
    typer.echo(f"--- consent text ---\n{consent.rstrip()}\n--- confirmation mail ---\n{mail.rstrip()}")


@app.command("proof")
def proof(
    email: Annotated[str, typer.Option(help="the person's e-mail address", callback=checked_email)],
    html: Annotated[Path | None, typer.Option("--html", help="also write the proof as an HTML document here")] = None,
    out: Annotated[
        bool, typer.Option("--out", help="write it encrypted to the rights outbox instead of printing it")
    ] = False,
) -> None:
    """The proof of consent for every list of the person, as Markdown (and HTML)."""
    from flows.consent_proof import issue_proof, render_html, render_markdown, write_proof

    made = in_session(lambda s: issue_proof(s, email))
    if out:
        folder = write_proof(made)
        typer.echo(f"proof {made.proof_id}: {made.status}, {len(made.lists)} list(s), written to {folder}")
    else:
        typer.echo(render_markdown(made), nl=False)
    if html is not None:
        html.write_text(render_html(made), encoding="utf-8")
        html.chmod(0o600)


@app.command("read")
def read(
    path: Path,
    to: Annotated[Path | None, typer.Option(help="write the decrypted file here instead of printing it")] = None,
) -> None:
    """Decrypt a file of the rights outbox (with the document key)."""
    from flows.consent_proof import read_outbox_file

    data = read_outbox_file(path)
    if to is None:
        typer.echo(data.decode("utf-8"), nl=False)
    else:
        to.write_bytes(data)
        to.chmod(0o600)
