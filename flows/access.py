"""Access (Art. 15 GDPR) and portability (Art. 20 GDPR): what the person gets.

**Access**: one package per request, written encrypted to the rights outbox as
``access.json`` and ``access.html`` (a readable document in German):

- everything the controller holds about the person: every table that leads to the subject
  (``models.erasure.subject_rows``), every column by its classification
  (``models.types.classify``: personal columns first), no hand-kept list; encrypted bytes
  (documents, a password) are described, not copied; the audit trail's entries about them;
- what each processor that received data holds *now*, read back through its API (the
  processor's ``READER``, found through the catalogue: ``connectors.access``);
- every recipient from the register (``models.recipients``) with purpose and dates, and per
  purpose the legal basis, storage period and what the seed lists (``core.catalogue``);
- the manual processors (no API) with how to ask them; where the data came from.

If a processor cannot be read (down, not configured), no package is written and the
request stays open (the follow-up tries again): a package must not leave out what a
processor holds.

**Portability**: the data the person gave us (profile, sign-ups, bookings, student-ID
orders; not our derived rows: states, processors' ids, audit) as ``portability.json`` and
one CSV per kind, in the schema ``PORTABLE`` declares (README: "Rights requests").

Prefect sees the request id and counts only; the files are for the officer to hand over.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy import select as sa_select
from sqlmodel import Session, SQLModel, col, select

from connectors import access as readers
from connectors.erasure import Target
from connectors.transport import ProcessorError
from core import catalogue
from core.clock import berlin_text
from flows.common import call_events, decision
from flows.erasure_processors import Clients
from flows.rights import Ask, Outcome, register, write_outbox
from models.audit import AuditEntry
from models.bookings import Booking
from models.consent import ConsentRecord
from models.db import transaction
from models.documents import DocumentCipher
from models.erasure import local_records, subject_rows
from models.isic import IsicDocument, IsicOrder, open_document
from models.recipients import Recipient
from models.rights import Right, RightsRequest
from models.subjects import DataSubject
from models.types import NOT_PERSONAL, PERSONAL, PSEUDONYMOUS, pii_class

ACCESS_SCHEMA = "psync.access/1"
PORTABILITY_SCHEMA = "psync.portability/1"

# Tables whose rows are our bookkeeping of the person's requests and deliveries, named in the
# package under these headings (every other table under its own name).
TABLE_TITLES = {
    "data_subject": "Stammdaten / profile",
    "consent": "Einwilligungen (Newsletter, Serviceangebote) / consents",
    "consent_event": "Ereignisse der Einwilligungen / consent events",
    "booking": "Terminbuchungen / bookings",
    "isic_order": "Bestellungen Studentenausweis / student-ID orders",
    "isic_document": "Hochgeladene Nachweise / uploaded documents",
    "recipient": "Empfängerregister / recipient register",
    "address_alias": "Frühere E-Mail-Adressen (nur pseudonym) / former addresses (pseudonyms only)",
    "erasure_request": "Löschanträge / erasure requests",
    "erasure_task": "Löschaufträge an Empfänger / erasure tasks",
    "rights_request": "Ihre Anträge / your requests",
}
# The controller's columns as the German document names them (any other under its own name).
COLUMN_TITLES = {
    "email": "E-Mail-Adresse",
    "insurance_number": "Krankenversichertennummer",
    "salutation": "Anrede",
    "first_name": "Vorname",
    "last_name": "Nachname",
    "phone": "Telefon",
    "birth_date": "Geburtsdatum",
    "concern": "Anliegen",
    "postal_code": "Postleitzahl",
    "iban": "IBAN",
    "institution": "Hochschule/Schule",
    "student_status": "Status",
    "phone_password_enc": "Telefonpasswort",
    "ciphertext": "Dokument",
    "list_name": "Liste",
    "state": "Stand",
    "status": "Stand",
    "signup_at": "angemeldet am",
    "signup_ip": "IP-Adresse bei Anmeldung",
    "confirm_at": "bestätigt am",
    "confirm_ip": "IP-Adresse bei Bestätigung",
    "withdrawn_at": "widerrufen am",
    "source": "Quelle (Seite)",
    "policy_version": "Fassung der Einwilligung",
    "ip": "IP-Adresse",
    "at": "Zeitpunkt",
    "kind": "Art",
    "channel": "Weg",
    "start_at": "Termin",
    "duration_min": "Dauer (Minuten)",
    "service_point": "Servicestelle",
    "booking_ref": "Buchungsnummer",
    "order_ref": "Bestellnummer",
    "processor": "Empfänger",
    "purpose": "Zweck",
    "first_sent_at": "erstmals übermittelt",
    "last_sent_at": "zuletzt übermittelt",
    "removed_at": "dort gelöscht",
    "created_at": "angelegt am",
    "updated_at": "geändert am",
    "cancelled_at": "storniert am",
    "received_at": "eingegangen am",
    "right": "Recht",
    "action": "Vorgang",
    "outcome": "Ergebnis",
}

# Where the data came from (Art. 15(1)(g)), by table: all of it from the person.
SOURCES = {
    "data_subject": "Ihre Angaben bei Anmeldung, Buchung oder Bestellung auf unserer Website",
    "consent": "Ihre Anmeldung zum Newsletter bzw. zu Serviceangeboten auf unserer Website (Double-Opt-In)",
    "consent_event": "Ihre Anmeldung, Bestätigung oder Abmeldung (Website, Abmeldelink)",
    "booking": "Ihre Terminbuchung auf unserer Website",
    "isic_order": "Ihre Bestellung des Studentenausweises auf unserer Website",
    "isic_document": "Ihre hochgeladenen Nachweise zur Bestellung des Studentenausweises",
    "recipient": "von uns geführt: an wen wir Ihre Daten übermittelt haben",
    "address_alias": "von uns geführt: bis wann eine berichtigte oder gelöschte Adresse Ihre war",
    "erasure_request": "Ihre Löschanträge",
    "erasure_task": "von uns geführt: Ausführung Ihrer Löschanträge",
    "rights_request": "Ihre Anträge auf Auskunft, Berichtigung usw.",
}


# values ------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A column's value as JSON: times ISO 8601 (UTC), ids as text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} Bytes, verschlüsselt gespeichert / stored encrypted>"
    return value


def _ordered_columns(table: Table) -> list:
    """Personal columns first, then the rest, each in the table's order."""
    rank = {PERSONAL: 0, NOT_PERSONAL: 1, PSEUDONYMOUS: 2}
    return sorted(table.columns, key=lambda c: rank.get(pii_class(c) or "", 3))


def controller_data(session: Session, subject_id: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    """Every row of the subject in every table that leads to them (by foreign keys), each
    column by its classification (personal first); encrypted bytes described, not copied."""
    found: dict[str, list[dict[str, Any]]] = {}
    for table in SQLModel.metadata.sorted_tables:
        condition = subject_rows(table, subject_id)
        if condition is None:
            continue
        columns = _ordered_columns(table)
        rows = session.execute(sa_select(*columns).where(condition)).mappings().all()
        if not rows:
            continue
        found[table.name] = [{c.name: _plain(row[c.name]) for c in columns} for row in rows]
    return found


def audit_entries(session: Session, pseudonym: str) -> list[dict[str, Any]]:
    """The audit trail's entries about the person (by pseudonym): when, what, where, result."""
    rows = session.exec(
        select(AuditEntry.at, AuditEntry.action, AuditEntry.outcome, AuditEntry.processor)
        .where(AuditEntry.subject_pseudonym == pseudonym)
        .order_by(col(AuditEntry.id))
    ).all()
    return [{"at": _plain(at), "action": a, "outcome": o, "processor": p} for at, a, o, p in rows]


def _rule_text(rule: catalogue.DeletionRule) -> str:
    start = catalogue.START_TEXT[rule.start].de
    period = "sofort" if rule.period_days == 0 else f"{rule.period_days} Tage"
    return f"{period} nach: {start}"


def purpose_facts(processor_key: str, purpose: str) -> dict[str, Any]:
    """What the catalogue says of a register purpose: name, legal basis, categories, storage."""
    found = catalogue.purpose_of(processor_key, purpose)
    if found is None:
        return {"purpose_name": purpose, "legal_basis": catalogue.NOT_STATED.de}
    return {
        "purpose_name": found.name.de,
        "legal_basis": found.legal_basis,
        "categories": [c.de for c in found.categories],
        "storage_period": _rule_text(found.rule),
        "deletion_rule": found.rule.id,
    }


def processor_facts(processor_key: str) -> dict[str, Any]:
    if not catalogue.known(processor_key):
        return {"processor": processor_key, "legal_name": processor_key}
    entry = catalogue.processor(processor_key)
    return {
        "processor": entry.key,
        "legal_name": entry.legal_name,
        "address": entry.address,
        "role": entry.role.value,
        "service": entry.service.de,
        "locations": entry.locations.de,
        "third_countries": entry.transfers.de,
    }


def manual_processors(received: set[str]) -> list[dict[str, Any]]:
    """Every processor without an API, with how to ask it, and whether the register says it
    received the person's data."""
    return [
        {
            **processor_facts(p.key),
            "contact": p.erasure.contact,
            "how_to_ask": p.erasure.channel.de,
            "received_your_data": p.key in received,
        }
        for p in catalogue.PROCESSORS
        if p.erasure.mode == catalogue.Mode.manual
    ]


def controller_rules() -> list[dict[str, Any]]:
    """The controller's own storage periods (deletion rules it holds)."""
    return [
        {
            "data": r.data_type.de,
            "storage_period": _rule_text(r),
            "deletion_rule": r.id,
            "justification": r.justification.de,
        }
        for r in catalogue.RULES
        if r.holder == "controller"
    ]


# reading the processors -------------------------------------------------------------------------
def read_processors(ask: Ask, rows: list[tuple[Recipient, tuple]], clients: Clients) -> tuple[list[dict], list[str]]:
    """Each register row read back at its processor now: (entries, processors that failed).

    ``read`` says how: ``api`` (``holds_now`` is what it answered, None: nothing), ``erased``
    (the register says it was erased there and it reads back absent, or can no longer be
    addressed), ``manual`` (no API), ``failed`` (named in the second list; the
    ``ProcessorError`` said in the entry, never a value)."""
    entries, failed = [], []
    for row, local in rows:
        entry: dict[str, Any] = {
            "processor": row.processor,
            "purpose": row.purpose,
            **purpose_facts(row.processor, row.purpose),
        }
        reader = readers.reader(row.processor)
        if reader is None:
            entry.update(read="manual", holds_now=None)
            entries.append(entry)
            continue
        target = Target(
            row.processor, row.purpose, row.external_id, ask.subject_id, ask.pseudonym, local[0], ask.settings, local[1]
        )
        try:
            held = reader.read(clients.get(row.processor), target)
        except ProcessorError as exc:
            failed.append(row.processor)
            entry.update(read="failed", error=f"{exc.operation}: HTTP {exc.status}", holds_now=None)
        except ValueError as exc:
            if row.removed_at is not None:
                # Erased there, verified by reading back then; what addressed the record (the
                # e-mail address of a receiver kept without an id) went with our copy.
                entry.update(read="erased", holds_now=None)
            else:  # a list without a configured group: names the setting
                failed.append(row.processor)
                entry.update(read="failed", error=str(exc)[:150], holds_now=None)
        else:
            gone = held is None and row.removed_at is not None
            entry.update(read="erased" if gone else "api", holds_now=held)
        entries.append(entry)
    return entries, failed


def _register(session: Session, subject: DataSubject) -> list[tuple[Recipient, tuple]]:
    """The subject's register rows with what a reader needs of ours: (e-mail, local records)."""
    rows = session.exec(
        select(Recipient)
        .where(Recipient.subject_id == subject.id)
        .order_by(col(Recipient.processor), col(Recipient.purpose))
    ).all()
    found = []
    for row in rows:
        purpose = catalogue.purpose_of(row.processor, row.purpose)
        local = local_records(session, purpose.local if purpose else None, subject.id, row.purpose)
        found.append((row, (subject.email, local)))
    return found


def recipients(rows: Iterable[tuple[Recipient, tuple]]) -> list[dict[str, Any]]:
    """Every recipient of the register with purpose and dates (Art. 15(1)(c))."""
    return [
        {
            **processor_facts(row.processor),
            "purpose": row.purpose,
            **purpose_facts(row.processor, row.purpose),
            "first_sent_at": _plain(row.first_sent_at),
            "last_sent_at": _plain(row.last_sent_at),
            "confirmed_at": _plain(row.confirmed_at),
            "removed_at": _plain(row.removed_at),
        }
        for row, _ in rows
    ]


# the package -----------------------------------------------------------------------------------
def access_package(ask: Ask, clients: Clients) -> tuple[dict[str, Any], list[str]]:
    """The access package of one request, and the processors that could not be read."""
    with transaction() as session:
        subject = session.get(DataSubject, ask.subject_id)
        assert subject is not None
        request = session.get(RightsRequest, ask.request_id)
        assert request is not None
        held = controller_data(session, subject.id)
        audit = audit_entries(session, subject.pseudonym)
        register_rows = _register(session, subject)
        listed = recipients(register_rows)
        due = request.due
    read, failed = read_processors(ask, register_rows, clients)
    package = {
        "schema": ACCESS_SCHEMA,
        "request": {
            "id": str(ask.request_id),
            "right": "access (Art. 15 DSGVO)",
            "received_at": _plain(ask.received_at),
            "channel": ask.channel,
            "due": _plain(due),
            "answered_at": _plain(ask.now),
        },
        "controller_data": held,
        "audit_trail": audit,
        "recipients": listed,
        "processors_now": read,
        "manual_processors": manual_processors({row.processor for row, _ in register_rows}),
        "controller_storage_periods": controller_rules(),
        "sources": {name: SOURCES.get(name, "von Ihnen selbst angegeben") for name in held},
        "automated_decisions": "keine automatisierte Entscheidungsfindung einschließlich Profiling (Art. 22 DSGVO)",
    }
    return package, failed


def _e(value: Any) -> str:
    return html.escape("–" if value in (None, "") else str(value))


def _when(value: Any) -> str:
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and "T" in value:
        try:
            return berlin_text(datetime.fromisoformat(value))
        except ValueError:
            return value
    return value


def _table(rows: list[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>–</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_when(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = (
    "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #999;padding:.2em .4em;vertical-align:top;font-size:.9em}"
    "pre{white-space:pre-wrap;background:#f4f4f4;padding:.5em}</style></head><body>"
)


def render_html(package: Mapping[str, Any]) -> str:
    """The package as a readable German document (every value escaped)."""
    request = package["request"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="de"><head><meta charset="utf-8"><title>Auskunft nach Art. 15 DSGVO</title>',
        STYLE,
        "<h1>Auskunft über Ihre personenbezogenen Daten (Art. 15 DSGVO)</h1>",
        (
            f"<p>Antrag {_e(request['id'])}, eingegangen am {_e(_when(request['received_at']))}, "
            f"beantwortet am {_e(_when(request['answered_at']))}.</p>"
        ),
        "<h2>1. Zwecke, Rechtsgrundlagen und Speicherdauer</h2>",
        _table(
            [
                {
                    "Empfänger": r["processor"],
                    "Zweck": r["purpose_name"],
                    "Rechtsgrundlage": r["legal_basis"],
                    "Datenkategorien": "; ".join(r.get("categories", [])),
                    "Speicherdauer": r.get("storage_period"),
                }
                for r in package["recipients"]
            ]
        ),
        "<p>Bei uns selbst gelten diese Speicherfristen:</p>",
        _table(
            [
                {"Daten": r["data"], "Speicherdauer": r["storage_period"], "Begründung": r["justification"]}
                for r in package["controller_storage_periods"]
            ]
        ),
        "<h2>2. Ihre Daten bei uns</h2>",
    ]
    for name, rows in package["controller_data"].items():
        parts.append(f"<h3>{_e(TABLE_TITLES.get(name, name))}</h3>")
        parts.append(f"<p>Herkunft: {_e(package['sources'].get(name))}</p>")
        parts.append(_table([{COLUMN_TITLES.get(k, k): v for k, v in row.items()} for row in rows]))
    if package.get("document_copies"):
        names = ", ".join(package["document_copies"])
        parts.append(f"<p>Kopien Ihrer hochgeladenen Nachweise liegen als Dateien bei: {_e(names)}.</p>")
    parts.append(f"<h3>Protokoll der Verarbeitung ({len(package['audit_trail'])} Einträge)</h3>")
    parts.append(_table([{COLUMN_TITLES.get(k, k): v for k, v in row.items()} for row in package["audit_trail"]]))
    parts.append("<h2>3. Empfänger Ihrer Daten (Art. 15 Abs. 1 lit. c DSGVO)</h2>")
    parts.append(
        _table(
            [
                {
                    "Empfänger": r["legal_name"],
                    "Anschrift": r.get("address"),
                    "Zweck": r["purpose_name"],
                    "erstmals übermittelt": r["first_sent_at"],
                    "zuletzt übermittelt": r["last_sent_at"],
                    "dort gelöscht": r["removed_at"],
                    "Drittland": r.get("third_countries"),
                }
                for r in package["recipients"]
            ]
        )
    )
    parts.append("<h2>4. Was unsere Auftragsverarbeiter heute über Sie speichern</h2>")
    parts.append("<p>Bei jedem Auftragsverarbeiter mit Schnittstelle heute abgefragt:</p>")
    for entry in package["processors_now"]:
        parts.append(f"<h3>{_e(entry['processor'])} – {_e(entry['purpose_name'])}</h3>")
        if entry["read"] == "manual":
            parts.append("<p>Keine Schnittstelle: siehe Abschnitt 5.</p>")
        elif entry["read"] == "erased":
            parts.append("<p>Dort gelöscht; heute sind dort keine Daten zu Ihnen gespeichert.</p>")
        elif entry["holds_now"] is None:
            parts.append("<p>Dort sind heute keine Daten zu Ihnen gespeichert.</p>")
        else:
            text = json.dumps(entry["holds_now"], ensure_ascii=False, indent=2, sort_keys=True)
            parts.append(f"<pre>{html.escape(text)}</pre>")
    parts.append("<h2>5. Auftragsverarbeiter ohne Schnittstelle</h2>")
    parts.append(
        _table(
            [
                {
                    "Auftragsverarbeiter": m["legal_name"],
                    "Leistung": m.get("service"),
                    "hat Daten von Ihnen erhalten": "ja" if m["received_your_data"] else "nein",
                    "Anfrage an": m["contact"],
                    "Weg": m["how_to_ask"],
                }
                for m in package["manual_processors"]
            ]
        )
    )
    parts.append(
        "<p>Über diese Stellen erteilen wir auf Nachfrage ebenfalls Auskunft; "
        "Sie können sich auch unmittelbar an sie wenden.</p>"
    )
    parts.append("<h2>6. Ihre Rechte</h2>")
    parts.append(
        "<p>Sie haben das Recht auf Berichtigung (Art. 16), Löschung (Art. 17), Einschränkung der "
        "Verarbeitung (Art. 18), Datenübertragbarkeit (Art. 20) und Widerspruch (Art. 21 DSGVO) sowie "
        "das Recht, eine erteilte Einwilligung jederzeit zu widerrufen (Art. 7 Abs. 3 DSGVO), und das "
        "Recht auf Beschwerde bei einer Aufsichtsbehörde (Art. 77 DSGVO). "
        f"{_e(package['automated_decisions'])}.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


_EXTENSIONS = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}


def document_copies(session: Session, subject_id: uuid.UUID, settings: Any) -> dict[str, bytes]:
    """A copy of each document the person uploaded that we still hold (Art. 15(3), Art. 20),
    decrypted, by file name ``document-<order>-<kind>.<ext>`` (our ids, never a name)."""
    cipher = DocumentCipher(settings.document_key_bytes())
    rows = session.exec(
        select(IsicDocument, IsicOrder.order_ref)
        .join(IsicOrder, col(IsicOrder.id) == col(IsicDocument.order_id))
        .where(IsicOrder.subject_id == subject_id)
        .order_by(col(IsicOrder.order_ref), col(IsicDocument.kind))
    ).all()
    copies = {}
    for document, order_ref in rows:
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", f"document-{order_ref}-{document.kind}")
        copies[f"{stem}.{_EXTENSIONS.get(document.media_type, 'bin')}"] = open_document(session, document, cipher)
    return copies


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False).encode()


@register(Right.access)
def answer_access(ask: Ask) -> Outcome:
    """Write the access package to the outbox; open (not written) when a processor failed."""
    clients = Clients(ask.settings)
    package, failed = access_package(ask, clients)
    events = [
        e
        for p in sorted({e["processor"] for e in package["processors_now"]})
        for e in call_events(clients.drain_calls(p))
    ]
    sizes = {
        "tables": len(package["controller_data"]),
        "rows": sum(len(rows) for rows in package["controller_data"].values()),
        "recipients": len(package["recipients"]),
        "processors_read": sum(1 for e in package["processors_now"] if e["read"] == "api"),
    }
    counts: dict[str, int] = {}
    for entry in package["processors_now"]:
        if entry["read"] not in ("manual", "erased"):
            outcome = "failed" if entry["read"] == "failed" else ("holds" if entry["holds_now"] else "holds_nothing")
            events.append(
                decision(
                    "rights.access.read",
                    outcome,
                    entry["processor"],
                    ask.pseudonym,
                    f"request={ask.request_id} purpose={entry['purpose']}",
                )
            )
    if failed:
        names = ", ".join(sorted(set(failed)))
        counts["access_read_failed"] = len(failed)
        return Outcome(False, f"not written: could not read {names}", counts, events)
    with transaction() as session:
        copies = document_copies(session, ask.subject_id, ask.settings)
    package["document_copies"] = sorted(copies)
    files = {"access.json": _dumps(package), "access.html": render_html(package).encode(), **copies}
    write_outbox(str(ask.request_id), files, ask.settings, ask.now)
    sizes["documents"] = len(copies)
    summary = " ".join(f"{k}={v}" for k, v in sizes.items()) + " files=access.json,access.html"
    counts["access_packages"] = 1
    return Outcome(True, summary, counts, events)


# portability ------------------------------------------------------------------------------------
# The data the person provided, by kind: (model, the columns given by the person). Our own
# derived data (states, processors' ids, audit) is not part of it (Art. 20(1)).
PORTABLE: dict[str, tuple[type[SQLModel], tuple[str, ...]]] = {
    "profile": (DataSubject, ("email", "salutation", "first_name", "last_name", "insurance_number")),
    "signups": (
        ConsentRecord,
        ("list_name", "signup_at", "source", "policy_version", "confirm_at", "withdrawn_at"),
    ),
    "bookings": (
        Booking,
        (
            "booking_ref",
            "channel",
            "service_point",
            "start_at",
            "duration_min",
            "salutation",
            "first_name",
            "last_name",
            "phone",
            "email",
            "birth_date",
            "insurance_number",
            "concern",
        ),
    ),
    "student_id_orders": (
        IsicOrder,
        (
            "order_ref",
            "created_at",
            "first_name",
            "last_name",
            "birth_date",
            "postal_code",
            "iban",
            "institution",
            "student_status",
        ),
    ),
}


def portable_data(session: Session, subject_id: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    """The person's provided data by kind (``PORTABLE``), oldest first."""
    found: dict[str, list[dict[str, Any]]] = {}
    for kind, (model, names) in PORTABLE.items():
        table = model.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
        condition = subject_rows(table, subject_id)
        assert condition is not None, f"{table.name} does not lead to a subject"
        columns = [table.c[n] for n in names if n in table.c]
        rows = session.execute(sa_select(*columns).where(condition).order_by(*table.primary_key.columns)).mappings()
        found[kind] = [{n: _plain(row.get(n)) for n in names} for row in rows]
    return found


def _csv(names: Iterable[str], rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(names), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue().encode()


@register(Right.portability)
def answer_portability(ask: Ask) -> Outcome:
    """Write the person's provided data as JSON and one CSV per kind to the outbox."""
    with transaction() as session:
        data = portable_data(session, ask.subject_id)
        copies = document_copies(session, ask.subject_id, ask.settings)
    # The booking's e-mail is the profile's: the schema names it per booking for the CSV.
    profile_email = data["profile"][0].get("email") if data["profile"] else None
    for booking in data["bookings"]:
        booking["email"] = profile_email
    files = {
        "portability.json": _dumps(
            {"schema": PORTABILITY_SCHEMA, "request_id": str(ask.request_id), "exported_at": _plain(ask.now), **data}
        )
    }
    for kind, (_, names) in PORTABLE.items():
        files[f"{kind}.csv"] = _csv(names, data[kind])
    files.update(copies)  # the uploads as they were given
    write_outbox(str(ask.request_id), files, ask.settings, ask.now)
    summary = " ".join(f"{kind}={len(rows)}" for kind, rows in data.items()) + f" files={len(files)}"
    counts: dict[str, int] = {}
    counts["portability_exports"] = 1
    return Outcome(True, summary, counts)
