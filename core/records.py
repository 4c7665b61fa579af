"""The Art. 30 record of processing activities and the deletion concept, from the catalogue.

Both are generated, never written by hand, so they cannot drift from what the jobs do: the
periods are the ones in force (``DeletionRule.days(settings)``: the settings the enforcing
flows read), the recipients and fields are the catalogue's, which the connectors enforce.
``psync docs record`` and ``psync docs deletion-concept`` write them; ``enforce-retention``
publishes the deletion concept as an artifact after each run.

Each document is a list of rows (``record_rows``, ``concept_rows``) rendered as Markdown or
CSV, in German or English. Nothing personal: the catalogue holds organisations and rules.

Example::

    print(render(record_rows(get_settings(), "de"), "md", title=RECORD_TITLE("de")))
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from core import catalogue
from core.catalogue import CLASSES, NOT_RECIPIENTS, PROCESSORS, RULES, START_TEXT, Text

RECORD_TITLE = Text(
    "Verzeichnis von Verarbeitungstätigkeiten (Art. 30 DSGVO)", "Record of processing activities (Art. 30 GDPR)"
)
CONCEPT_TITLE = Text("Löschkonzept (DIN 66398 / DIN EN ISO/IEC 27555)", "Deletion concept (DIN 66398 / ISO/IEC 27555)")

_RECORD_COLUMNS = (
    ("activity", Text("Verarbeitungstätigkeit", "processing activity")),
    ("purpose_key", Text("Schlüssel", "key")),
    ("seed", Text("Quelle", "source")),
    ("legal_basis", Text("Rechtsgrundlage", "legal basis")),
    ("subjects", Text("Betroffene", "data subjects")),
    ("categories", Text("Datenkategorien", "categories of data")),
    ("fields", Text("Felder (Positivliste)", "fields (allow-list)")),
    ("recipient", Text("Empfänger", "recipient")),
    ("role", Text("Rolle", "role")),
    ("sub_processors", Text("Unterauftragsverarbeiter", "sub-processors")),
    ("locations", Text("Serverstandorte", "server locations")),
    ("transfers", Text("Drittlandübermittlung", "third-country transfer")),
    ("rule", Text("Löschregel", "deletion rule")),
    ("deletion", Text("Löschfrist", "deletion period")),
    ("erasure", Text("Löschung beim Empfänger", "erasure at the recipient")),
    ("toms", Text("TOM (Art. 32)", "TOMs (Art. 32)")),
)
_CONCEPT_COLUMNS = (
    ("rule", Text("Regel", "rule")),
    ("data_type", Text("Datenart", "data type")),
    ("holder", Text("Ort", "held by")),
    ("start_event", Text("Startzeitpunkt", "start event")),
    ("period_days", Text("Regelfrist (Tage)", "standard period (days)")),
    ("deletion_class", Text("Löschklasse", "deletion class")),
    ("justification", Text("Begründung / Aufbewahrungspflicht", "justification / retention duty")),
    ("enforced_by", Text("Umsetzung", "enforced by")),
    ("backup_days", Text("Frist Sicherungen (Tage)", "backup period (days)")),
)
_ROLE = {
    catalogue.Role.processor: Text("Auftragsverarbeiter", "processor"),
    catalogue.Role.sub_processor: Text("Unterauftragsverarbeiter", "sub-processor"),
}
_MODE = {
    catalogue.Mode.api: Text("über die API, geprüft durch Rücklesen", "through the API, verified by reading back"),
    catalogue.Mode.manual: Text(
        "manuell: Anschreiben, Bestätigung mit Nachweis", "manual: letter, confirmed with evidence"
    ),
}
_MANUAL = Text("manuell durch den Auftragsverarbeiter, auf Weisung", "by the processor on our instruction (manual)")
_NOT_STATED_BACKUP = Text("nicht angegeben (AV-Vertrag)", "not stated (processing agreement)")


def _holder(key: str, language: str) -> str:
    if key == "controller":
        return "Verantwortlicher" if language == "de" else "controller"
    return catalogue.processor(key).legal_name if catalogue.known(key) else key


def _period(rule: catalogue.DeletionRule, settings: Any, language: str) -> str:
    days = rule.days(settings)
    start = START_TEXT[rule.start](language)
    if days == 0:
        return f"{'sofort nach' if language == 'de' else 'at once after'}: {start}"
    return f"{days} {'Tage nach' if language == 'de' else 'days after'}: {start}"


def record_rows(settings: Any, language: str) -> list[dict[str, str]]:
    """One row per processor and purpose, then one per organisation that is no recipient."""
    toms = str(getattr(settings, "toms_reference", ""))
    rows = []
    for entry in PROCESSORS:
        for purpose in entry.purposes:
            rows.append(
                {
                    "activity": purpose.name(language),
                    "purpose_key": purpose.key,
                    "seed": purpose.seed,
                    "legal_basis": purpose.legal_basis,
                    "subjects": purpose.subjects(language),
                    "categories": "; ".join(c(language) for c in purpose.categories),
                    "fields": ", ".join(sorted(purpose.fields)) or "–",
                    "recipient": f"{entry.legal_name}, {entry.address}",
                    "role": _ROLE[entry.role](language)
                    + (f" ({_holder(entry.contracted_by, language)})" if entry.contracted_by != "controller" else ""),
                    "sub_processors": ", ".join(catalogue.processor(s).legal_name for s in entry.sub_processors) or "–",
                    "locations": entry.locations(language),
                    "transfers": entry.transfers(language),
                    "rule": purpose.rule.id,
                    "deletion": _period(purpose.rule, settings, language),
                    "erasure": _MODE[entry.erasure.mode](language)
                    + (f" – {entry.erasure.contact}" if entry.erasure.contact else ""),
                    "toms": toms,
                }
            )
    # What the controller deletes in its own systems, with no recipient (sign-ups never
    # confirmed, uploaded documents): the periods belong in the record too.
    own = "– (nur beim Verantwortlichen)" if language == "de" else "– (controller only)"
    for rule in RULES:
        if rule.holder == "controller":
            rows.append(
                {key: "–" for key, _ in _RECORD_COLUMNS}
                | {
                    "activity": rule.data_type(language),
                    "recipient": own,
                    "rule": rule.id,
                    "deletion": _period(rule, settings, language),
                    "toms": toms,
                }
            )
    none = "kein Empfänger" if language == "de" else "not a recipient"
    for other in NOT_RECIPIENTS:
        rows.append(
            {
                "activity": other.service(language),
                "purpose_key": "–",
                "seed": other.seed,
                "legal_basis": "–",
                "subjects": "–",
                "categories": "–",
                "fields": "–",
                "recipient": f"{other.legal_name}, {other.address}",
                "role": f"{none}: {other.why(language)}",
                "sub_processors": "–",
                "locations": other.locations(language),
                "transfers": "–",
                "rule": "–",
                "deletion": "–",
                "erasure": "–",
                "toms": "–",
            }
        )
    return rows


def concept_rows(settings: Any, language: str) -> list[dict[str, str]]:
    """One row per deletion rule, with the period in force."""
    rows = []
    for rule in RULES:
        backup = _NOT_STATED_BACKUP(language) if rule.backup_days is None else str(rule.backup_days)
        enforced = _MANUAL(language) if rule.enforced_by == "manual" else rule.enforced_by
        rows.append(
            {
                "rule": rule.id,
                "data_type": rule.data_type(language),
                "holder": _holder(rule.holder, language),
                "start_event": START_TEXT[rule.start](language),
                "period_days": str(rule.days(settings)),
                "deletion_class": rule.deletion_class,
                "justification": rule.justification(language),
                "enforced_by": enforced,
                "backup_days": backup,
            }
        )
    return rows


_CLASS_COLUMNS = (
    ("class", Text("Löschklasse", "deletion class")),
    ("start_event", Text("Startzeitpunkt", "start event")),
    ("period_days", Text("Regelfrist (Tage)", "standard period (days)")),
    ("name", Text("Bezeichnung", "name")),
)


def class_rows(language: str) -> list[dict[str, str]]:
    """The deletion classes (start-event kind × standard period)."""
    return [
        {
            "class": c.id,
            "start_event": START_TEXT[c.start](language),
            "period_days": str(c.period_days),
            "name": c.name(language),
        }
        for c in CLASSES
    ]


def _headers(rows: Sequence[dict[str, str]], language: str, columns) -> list[str]:
    names = {key: label(language) for key, label in columns}
    return [names.get(key, key) for key in rows[0]] if rows else []


def render(rows: Sequence[dict[str, str]], fmt: str, language: str, kind: str) -> str:
    """`rows` of the `kind` ("record" or "concept") as Markdown (with a title) or CSV."""
    columns = _RECORD_COLUMNS if kind == "record" else _CONCEPT_COLUMNS
    headers = _headers(rows, language, columns)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows([row.values() for row in rows])
        return out.getvalue()
    if fmt != "md":
        raise ValueError("format must be md or csv")
    title = (RECORD_TITLE if kind == "record" else CONCEPT_TITLE)(language)
    lines = [f"# {title}", "", _table(headers, rows)]
    if kind == "concept":
        classes = class_rows(language)
        heading = "Löschklassen" if language == "de" else "Deletion classes"
        lines += ["", f"## {heading}", "", _table(_headers(classes, language, _CLASS_COLUMNS), classes)]
    return "\n".join(lines) + "\n"


def _table(headers: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in rows]
    return "\n".join(out)


def document(kind: str, settings: Any, language: str = "de", fmt: str = "md") -> str:
    """The record ("record") or the deletion concept ("concept"), rendered."""
    if language not in ("de", "en"):
        raise ValueError("language must be de or en")
    if kind == "record":
        return render(record_rows(settings, language), fmt, language, kind)
    if kind == "concept":
        return render(concept_rows(settings, language), fmt, language, kind)
    raise ValueError("kind must be record or concept")
