"""Proof of consent (issue 18, part 6): what a person agreed to, when, from where, as a
document the controller can hand over or print at any time.

For every list of the person (``models.consent.ConsentRecord``): the sign-up and the
confirmation with date and time (Europe/Berlin and UTC), both IP addresses, the page the
sign-up came from, the policy version with its consent text and confirmation mail
(``models.consent_text``, registered once and never changed), the withdrawal if any (when,
by which channel), and the history of events behind it. When the address was corrected
since (Art. 16), the proof says so, with the date and the rectification request's id: the
old address is the same person's, but it is kept nowhere new, and the proof names only the
one the person has now. Nothing of anyone else: the
document is built from this person's rows only. For a person whose data was erased it says
so, and holds nothing else.

Two ways in, one builder (``issue_proof``, which writes the audit row):

- ``psync consent proof --email …`` prints it as Markdown, ``--html FILE`` writes it as a
  self-contained HTML document, ``--out`` writes both encrypted to the rights outbox;
- the ``consent-proof`` flow, the officer's form in the Prefect UI: the e-mail address typed
  in is blanked from the run's stored parameters whatever the outcome (as in
  ``flows.erasure_form``), the proof goes encrypted to the rights outbox, and the artifact
  names the file and counts only.

The proof goes to the rights outbox through ``flows.rights.write_outbox`` (setting
``rights_outbox``, files encrypted with the document key; ``follow-up-rights-requests``
deletes them after ``rights_outbox_days``, as it does access packages).
"""

from __future__ import annotations

import html
import time as clock
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from sqlmodel import Session, col, select

from core.settings import get_settings
from flows import erasure_form as form
from flows.common import NO_RESULTS, decision, one_line_failure, write_audit
from flows.erasure_form import Text
from flows.rights import purge_outbox, read_outbox, write_outbox
from models.consent import RANK, ConsentEvent, ConsentList, ConsentRecord, EventKind
from models.consent_text import ConsentText, check_version, register, texts_of
from models.db import transaction
from models.identity import normalise_email, pseudonym
from models.rights import RequestStatus, Right, RightsRequest
from models.subjects import DataSubject
from models.types import BERLIN, utcnow

FLOW_NAME = "consent-proof"
OUTBOX_PREFIX = "consent-proof-"
PROOF_FILES = ("nachweis.md", "nachweis.html")

LIST_TITLES = {
    ConsentList.newsletter: "Newsletter",
    ConsentList.service_offers: "Mehrwert- und Serviceangebote sowie Kundenbefragungen",
}
STATE_TITLES = {
    "pending": "angemeldet, noch nicht bestätigt",
    "confirmed": "bestätigt, Einwilligung erteilt",
    "withdrawn": "widerrufen",
    "expired": "abgelaufen (nie bestätigt)",
    "awaiting_signup": "bestätigt, die Anmeldung dazu ist noch nicht eingegangen",
}
KIND_TITLES = {
    EventKind.signup: "Anmeldung",
    EventKind.confirm: "Bestätigung (Double-Opt-In)",
    EventKind.withdraw: "Widerruf",
    EventKind.expire: "Ablauf (unbestätigt gelöscht)",
    EventKind.erase: "Löschung der Daten",
}
CHANNEL_TITLES = {
    "email": "per E-Mail",
    "portal": "im Portal",
    "newsletter-link": "über den Abmeldelink im Newsletter",
}


# the proof -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One event of a list's history, as the proof shows it."""

    kind: str
    at: datetime
    ip: str | None
    channel: str | None
    source: str | None
    policy_version: str | None


@dataclass(frozen=True)
class ListProof:
    """The evidence for one list: the record's current cycle and its history."""

    list_name: str
    state: str
    signup_at: datetime | None  # None: no sign-up known (a withdrawal only)
    signup_ip: str | None
    source: str | None
    policy_version: str | None
    confirm_at: datetime | None
    confirm_ip: str | None
    withdrawn_at: datetime | None
    withdraw_channel: str | None
    expired_at: datetime | None
    events: list[Event]


@dataclass
class Proof:
    """Everything the document shows; ``status`` found, unknown or erased."""

    status: str
    made_at: datetime
    proof_id: uuid.UUID
    email: str = ""
    name: str = ""
    pseudonym: str | None = None
    erased_at: datetime | None = None
    lists: list[ListProof] = field(default_factory=list)
    texts: dict[str, ConsentText] = field(default_factory=dict)
    # When the address was corrected (Art. 16) and by which request: (completed at, request id).
    # Never the old address: the proof names the one the person has now.
    corrections: list[tuple[datetime, uuid.UUID]] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(len(p.events) for p in self.lists)


def find_subject(session: Session, email: str, key: bytes) -> DataSubject | None:
    """The subject holding this (normalised) address; else the one without an address (an
    erased one) that kept only its pseudonym. Never a subject holding another address: whoever
    holds an address now is the only one whose proof it opens."""
    found = session.exec(select(DataSubject).where(DataSubject.email == email)).first()
    if found is not None:
        return found
    query = select(DataSubject).where(
        DataSubject.pseudonym == pseudonym(key, "email", email), col(DataSubject.email).is_(None)
    )
    return session.exec(query).first()


def gather(session: Session, email: str, key: bytes, now: datetime, proof_id: uuid.UUID | None = None) -> Proof:
    """The proof for the person with this address, read from their rows only. Writes nothing."""
    email = normalise_email(email)
    proof = Proof("unknown", now, proof_id or uuid.uuid4(), email=email)
    subject = find_subject(session, email, key)
    if subject is None:
        return proof
    proof.pseudonym = subject.pseudonym
    if subject.erased_at is not None:
        proof.status, proof.erased_at = "erased", subject.erased_at
        return proof
    proof.status = "found"
    proof.name = " ".join(p for p in (subject.salutation, subject.first_name, subject.last_name) if p)
    proof.corrections = address_corrections(session, subject.id)
    records = session.exec(
        select(ConsentRecord).where(ConsentRecord.subject_id == subject.id).order_by(col(ConsentRecord.list_name))
    ).all()
    for record in records:
        rows = session.exec(select(ConsentEvent).where(ConsentEvent.consent_id == record.id)).all()
        events = sorted(
            (Event(e.kind, e.at, e.ip, e.channel, e.source, e.policy_version) for e in rows),
            key=lambda e: (e.at, RANK[EventKind(e.kind)]),
        )
        # settle() puts the withdrawal's time in signup_at when no sign-up is known.
        signed_up = any(e.kind == EventKind.signup for e in events)
        proof.lists.append(
            ListProof(
                record.list_name,
                record.state,
                record.signup_at if signed_up else None,
                record.signup_ip,
                record.source,
                record.policy_version,
                record.confirm_at,
                record.confirm_ip,
                record.withdrawn_at,
                record.withdraw_channel,
                record.expired_at,
                events,
            )
        )
    versions = {p.policy_version for p in proof.lists} | {e.policy_version for p in proof.lists for e in p.events}
    proof.texts = texts_of(session, (v for v in versions if v))
    return proof


def address_corrections(session: Session, subject_id: uuid.UUID) -> list[tuple[datetime, uuid.UUID]]:
    """The subject's completed rectifications that corrected the e-mail address: (when it
    completed, the request's id), oldest first (``RightsRequest.corrected`` names the fields)."""
    rows = session.exec(
        select(RightsRequest.completed_at, RightsRequest.id, RightsRequest.corrected).where(
            RightsRequest.subject_id == subject_id,
            RightsRequest.right == Right.rectification,
            RightsRequest.status == RequestStatus.completed,
        )
    ).all()
    found = [(at, rid) for at, rid, fields in rows if at is not None and "email" in fields.split(",")]
    return sorted(found)


def issue_proof(session: Session, email: str, now: datetime | None = None, proof_id: uuid.UUID | None = None) -> Proof:
    """``gather`` and its audit row (who was looked up, by pseudonym; how many lists).

    ValueError (naming no value) for an address that is not one.
    """
    settings = get_settings()
    proof = gather(session, email, settings.hmac_key(), now or utcnow(), proof_id)
    event = decision(
        "consent.proof",
        proof.status,
        subject=proof.pseudonym,
        detail=f"lists={len(proof.lists)} events={proof.events} address_corrections={len(proof.corrections)}",
        proof=proof.proof_id,
    )
    write_audit(session, [event])
    return proof


# rendering -------------------------------------------------------------------------------
def when(at: datetime) -> str:
    """A time as the proof prints it: Berlin wall-clock with zone and offset, and UTC.

    >>> when(datetime(2026, 11, 21, 9, 0, 5, tzinfo=UTC))
    '21.11.2026 10:00:05 CET (Europe/Berlin, UTC+01:00) = 2026-11-21 09:00:05 UTC'
    """
    local = at.astimezone(BERLIN)
    offset = local.strftime("%z")
    return (
        f"{local:%d.%m.%Y %H:%M:%S} {local.tzname()} (Europe/Berlin, UTC{offset[:3]}:{offset[3:]}) = "
        f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    )


def _day(d: date) -> str:
    return f"{d:%d.%m.%Y}"


def _facts(p: ListProof, texts: dict[str, ConsentText]) -> list[tuple[str, str]]:
    """The rows of a list's evidence: (what, value), as plain text."""
    none = "—"
    rows = [("Liste", f"{LIST_TITLES.get(ConsentList(p.list_name), p.list_name)} ({p.list_name})")]
    rows.append(("Stand", f"{STATE_TITLES.get(p.state, p.state)} ({p.state})"))
    if p.signup_at is None:
        rows.append(("Anmeldung", "keine Anmeldung bekannt"))
    else:
        rows.append(("Anmeldung (Datum und Uhrzeit)", when(p.signup_at)))
        rows.append(("IP-Adresse bei der Anmeldung", p.signup_ip or none))
        rows.append(("Anmeldeseite (Quelle)", p.source or none))
    if p.policy_version:
        text = texts.get(p.policy_version)
        since = f", gültig ab {_day(text.effective_from)}" if text else " (Text nicht registriert)"
        rows.append(("Fassung des Einwilligungstexts", f"{p.policy_version}{since}"))
    if p.confirm_at is not None:
        rows.append(("Bestätigung (Datum und Uhrzeit)", when(p.confirm_at)))
        rows.append(("IP-Adresse bei der Bestätigung", p.confirm_ip or none))
    elif p.signup_at is not None:
        rows.append(("Bestätigung", "nicht bestätigt"))
    if p.withdrawn_at is not None:
        channel = CHANNEL_TITLES.get(p.withdraw_channel or "", p.withdraw_channel or none)
        rows.append(("Widerruf (Datum und Uhrzeit)", when(p.withdrawn_at)))
        rows.append(("Widerruf (Weg)", f"{channel} ({p.withdraw_channel})"))
    else:
        rows.append(("Widerruf", "kein Widerruf"))
    if p.expired_at is not None:
        rows.append(("Abgelaufen und Nachweisdaten gelöscht", when(p.expired_at)))
    return rows


def _history(p: ListProof) -> list[tuple[str, str, str, str, str]]:
    return [
        (
            when(e.at),
            KIND_TITLES.get(EventKind(e.kind), e.kind),
            e.ip or "—",
            CHANNEL_TITLES.get(e.channel or "", e.channel or "—"),
            e.policy_version or "—",
        )
        for e in p.events
    ]


HISTORY_COLUMNS = ("Zeitpunkt", "Ereignis", "IP-Adresse", "Weg", "Fassung")
TITLE = "Nachweis der Einwilligung (Double-Opt-In)"


def _intro(proof: Proof) -> list[tuple[str, str]]:
    rows = [("Erstellt am", when(proof.made_at)), ("Nachweis-Nr.", str(proof.proof_id))]
    if proof.status == "found":
        corrected = [
            ("E-Mail-Adresse berichtigt", f"am {when(at)} (Berichtigungsantrag {rid}, Art. 16 DSGVO)")
            for at, rid in proof.corrections
        ]
        rows[:0] = [("Betroffene Person", proof.name or "—"), ("E-Mail-Adresse", proof.email), *corrected]
    return rows


def _status_line(proof: Proof) -> str:
    if proof.status == "erased":
        assert proof.erased_at is not None
        return (
            f"Die Daten dieser Person wurden am {when(proof.erased_at)} gelöscht. "
            "Es liegen keine Daten und kein Nachweis mehr vor."
        )
    if proof.status == "unknown":
        return "Zu dieser E-Mail-Adresse liegen keine Daten vor."
    if not proof.lists:
        return "Zu dieser Person liegt keine Einwilligung vor."
    return ""


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _fence(text: str) -> str:
    ticks = "~~~"
    while ticks in text:
        ticks += "~"
    return f"{ticks}text\n{text.rstrip()}\n{ticks}"


def render_markdown(proof: Proof) -> str:
    """The proof as Markdown (German)."""
    out = [f"# {TITLE}", ""]
    out += ["| | |", "|---|---|", *(f"| {a} | {_md_cell(b)} |" for a, b in _intro(proof)), ""]
    status = _status_line(proof)
    if status:
        out += [status, ""]
    for p in proof.lists:
        out += [f"## {LIST_TITLES.get(ConsentList(p.list_name), p.list_name)}", ""]
        out += ["| | |", "|---|---|", *(f"| {a} | {_md_cell(b)} |" for a, b in _facts(p, proof.texts)), ""]
        out += ["### Verlauf", "", "| " + " | ".join(HISTORY_COLUMNS) + " |", "|---|---|---|---|---|"]
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in _history(p)]
        out.append("")
    for version, text in sorted(proof.texts.items()):
        out += [f"## Texte der Fassung {version}", ""]
        out += [f"Gültig ab {_day(text.effective_from)}, registriert am {when(text.registered_at)}.", ""]
        out += [f"### Einwilligungstext (SHA-256 {text.consent_sha256})", "", _fence(text.consent_text), ""]
        out += [f"### Bestätigungsmail (SHA-256 {text.mail_sha256})", "", _fence(text.mail_text), ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#111}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "td,th{border:1px solid #999;padding:.3em .6em;text-align:left;vertical-align:top}"
    "th{background:#eee}pre{white-space:pre-wrap;border:1px solid #ccc;padding:.8em;background:#fafafa}"
    "@media print{body{margin:0}}"
)


def _html_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td></tr>" for a, b in rows)
    return f"<table>{body}</table>"


def render_html(proof: Proof) -> str:
    """The proof as one self-contained HTML document (German): no script, nothing loaded
    from elsewhere, printable."""
    e = html.escape
    parts = [
        '<!DOCTYPE html><html lang="de"><head><meta charset="utf-8">',
        f"<title>{e(TITLE)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(TITLE)}</h1>",
        _html_table(_intro(proof)),
    ]
    status = _status_line(proof)
    if status:
        parts.append(f"<p>{e(status)}</p>")
    for p in proof.lists:
        parts.append(f"<h2>{e(LIST_TITLES.get(ConsentList(p.list_name), p.list_name))}</h2>")
        parts.append(_html_table(_facts(p, proof.texts)))
        head = "".join(f"<th>{e(c)}</th>" for c in HISTORY_COLUMNS)
        rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in _history(p))
        parts.append(f"<h3>Verlauf</h3><table><tr>{head}</tr>{rows}</table>")
    for version, text in sorted(proof.texts.items()):
        parts.append(f"<h2>Texte der Fassung {e(version)}</h2>")
        parts.append(f"<p>Gültig ab {_day(text.effective_from)}, registriert am {e(when(text.registered_at))}.</p>")
        parts.append(f"<h3>Einwilligungstext</h3><p>SHA-256 {text.consent_sha256}</p><pre>{e(text.consent_text)}</pre>")
        parts.append(f"<h3>Bestätigungsmail</h3><p>SHA-256 {text.mail_sha256}</p><pre>{e(text.mail_text)}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def proof_files(proof: Proof) -> dict[str, bytes]:
    """The proof's two documents, by file name."""
    return {"nachweis.md": render_markdown(proof).encode(), "nachweis.html": render_html(proof).encode()}


# registering texts -----------------------------------------------------------------------
def register_text(session: Session, version: str, consent_text: str, mail_text: str, effective_from: date) -> bool:
    """``models.consent_text.register`` and its audit row; True when registered now, False
    when the version already held these texts (TextConflict when it holds others)."""
    registered = register(session, check_version(version), consent_text, mail_text, effective_from)
    text = registered.text
    outcome = "registered" if registered.created else "unchanged"
    detail = f"version={text.version} consent_sha256={text.consent_sha256[:16]} mail_sha256={text.mail_sha256[:16]}"
    write_audit(session, [decision("consent.text", outcome, detail=detail)])
    return registered.created


def read_outbox_file(path: Path) -> bytes:
    """A file of the outbox, decrypted (ValueError when the document key does not open it)."""
    return read_outbox(path)


def write_proof(proof: Proof) -> Path:
    """The proof's documents, encrypted, in a new folder of the rights outbox named by the
    proof's number only (no name, no address); old folders there are purged first."""
    purge_outbox(utcnow())
    # Named with the person's pseudonym too, so that their erasure finds it (forget_outbox).
    owner = f"{proof.pseudonym}-" if proof.pseudonym else ""
    return write_outbox(f"{OUTBOX_PREFIX}{owner}{proof.proof_id}", proof_files(proof))


# the form's runs -------------------------------------------------------------------------
PERSONAL = ("email",)


def _not_reopened(parameters: Mapping[str, Any]) -> uuid.UUID:
    """A stale run of this form opens nothing (a proof is made when its run starts): blanked,
    and one not started yet cancelled with this as its reason."""
    raise ValueError("a proof of consent is made when its run starts; start a new one")


def tidy_stale_runs() -> dict[str, int]:
    """Blank the address in every consent-proof run that still holds it and is not running
    (``erasure_form.tidy_stale_runs``, every page); one not started yet is cancelled."""
    return form.tidy_stale_runs(_not_reopened, FLOW_NAME, PERSONAL)


def _artifact(proof: Proof, folder: Path, seconds: float) -> None:
    """The run's artifact: the file and counts only."""
    table = "\n".join(
        [
            "| Was / What | |",
            "|---|---|",
            f"| Datei / File | `{folder.name}/` ({', '.join(f'{n}.enc' for n in PROOF_FILES)}) |",
            f"| Ergebnis / Outcome | {proof.status} |",
            f"| Listen / Lists | {len(proof.lists)} |",
            f"| Ereignisse / Events | {proof.events} |",
            f"| Sekunden / Seconds | {seconds:.2f} |",
        ]
    )
    create_markdown_artifact(
        markdown=f"# Nachweis der Einwilligung / Proof of consent\n\n{table}\n\n"
        "Verschlüsselt im Rechte-Ausgang / encrypted in the rights outbox; "
        "keine personenbezogenen Daten hier / no personal data here.",
        key=FLOW_NAME,
    )


@flow(name=FLOW_NAME, **NO_RESULTS)
@one_line_failure
def consent_proof(
    email: Annotated[Text, form.field("E-Mail-Adresse / e-mail address", maxLength=254)] = "",
) -> dict[str, int]:
    """Proof of consent for one person: every list, with the texts agreed to, written
    encrypted to the rights outbox as Markdown and HTML.

    The address typed in is blanked from this run's stored parameters whatever the outcome;
    the artifact names the file and counts only.

    Args:
        email: The person's e-mail address, at most 254 characters.
    """
    logger = get_run_logger()
    started = clock.perf_counter()
    try:
        if not email.strip():
            raise ValueError("give the person's e-mail address")
        with transaction() as session:
            proof = issue_proof(session, email)
    finally:  # found, unknown or refused: nothing typed in is kept with the run
        form.forget(None, PERSONAL)
        tidy_stale_runs()
    folder = write_proof(proof)
    _artifact(proof, folder, clock.perf_counter() - started)
    logger.info("consent proof %s: %s, %d list(s)", proof.proof_id, proof.status, len(proof.lists))
    return {"lists": len(proof.lists), "events": proof.events, "found": int(proof.status == "found")}
