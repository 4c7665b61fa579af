"""``psync docs …``: the documents the processing catalogue generates (``core.records``).

``psync docs record`` writes the Art. 30 record of processing activities, ``psync docs
deletion-concept`` the deletion concept; Markdown or CSV, German or English, to standard
output or a file. Both read the periods in force from the settings.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

docs_app = typer.Typer(help="Generated documents: the Art. 30 record and the deletion concept.")


class Language(StrEnum):
    de = "de"
    en = "en"


class DocFormat(StrEnum):
    md = "md"
    csv = "csv"


def _write(kind: str, language: Language, fmt: DocFormat, out: Path | None) -> None:
    from core.records import document
    from core.settings import get_settings

    text = document(kind, get_settings(), language.value, fmt.value)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"written: {out}")


LanguageOption = Annotated[Language, typer.Option("--lang", help="de or en")]
FormatOption = Annotated[DocFormat, typer.Option("--format", help="md or csv")]
OutOption = Annotated[Path | None, typer.Option("--out", help="file to write (default: standard output)")]


@docs_app.command("record")
def record(language: LanguageOption = Language.de, fmt: FormatOption = DocFormat.md, out: OutOption = None) -> None:
    """The record of processing activities (Art. 30 GDPR): purposes, subjects, data,
    recipients, transfers, deletion periods, a pointer to the TOMs."""
    _write("record", language, fmt, out)


@docs_app.command("deletion-concept")
def deletion_concept(
    language: LanguageOption = Language.de, fmt: FormatOption = DocFormat.md, out: OutOption = None
) -> None:
    """The deletion concept (DIN 66398 / ISO/IEC 27555): data types, rules, classes,
    justifications, backup periods."""
    _write("concept", language, fmt, out)


retention_app = typer.Typer(help="Deletion rules: what is kept past its period.")


@retention_app.command("check")
def check(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Berlin calendar day YYYY-MM-DD (default: today)")
    ] = None,
) -> None:
    """List every deletion rule with records kept past its period; exit 1 when there are any
    (as a monitor runs it). Records a restriction (Art. 18) keeps are listed as "held by
    restriction", not overdue. Rule ids and counts only."""
    from datetime import date

    from core.catalogue import rule
    from core.clock import berlin_today
    from core.settings import get_settings
    from flows.retention import held_by_restriction, overdue
    from models.types import utcnow

    try:
        today = date.fromisoformat(as_of) if as_of else berlin_today(utcnow())
    except ValueError:
        typer.echo("--as-of must be a date YYYY-MM-DD", err=True)
        raise typer.Exit(2) from None
    late = overdue(today, get_settings())
    # Kept lawfully while their subject is restricted (Art. 18): said, not overdue.
    for rule_id, count in sorted(held_by_restriction(today, get_settings()).items()):
        typer.echo(f"{rule_id} {rule(rule_id).data_type.en}: {count} held by restriction")
    if not late:
        typer.echo(f"{today}: nothing kept past its deletion period")
        return
    for rule_id, count in sorted(late.items()):
        typer.echo(f"{rule_id} {rule(rule_id).data_type.en}: {count} overdue")
    raise typer.Exit(1)
