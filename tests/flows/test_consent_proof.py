"""Proof of consent (issue 18, part 6): consent texts by version, intake refusing an unknown
version (file and HTTP door), ``psync consent proof`` for an active and a withdrawn
subscriber on two lists with nothing of anyone else, an erased and an unknown person, and
the ``consent-proof`` flow (the UI's form) writing the proof encrypted to the outbox while
its run keeps no address."""

from __future__ import annotations

import json
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from prefect.client.orchestration import get_client
from sqlalchemy import func, text
from sqlmodel import select
from typer.testing import CliRunner

from core.settings import get_settings
from flows.consent_proof import consent_proof, gather, issue_proof, read_outbox_file, render_html
from flows.intake import intake_lines
from models.audit import AuditEntry
from models.consent import ConsentEvent, ConsentRecord
from models.consent_text import (
    SHIPPED,
    ConsentText,
    TextConflict,
    all_texts,
    register,
    register_shipped,
    sha256,
    shipped,
)
from models.db import transaction
from models.erasure import erase_controller_copy
from models.subjects import DataSubject
from psync.cli import app
from psync.serve import DoorConfig

from doorway import Clock, post_signed, serve_door
from support import TEST_KEY

BERLIN_OFFSET = "+01:00"  # November
ERIKA = "erika.beweis@example.de"
MAX = "max.anderer@example.de"
# Erika: the newsletter confirmed and standing; service offers confirmed, then withdrawn.
ERIKA_EVENTS = [
    {
        "type": "consent.signup",
        "list": "newsletter",
        "email": ERIKA,
        "salutation": "Frau",
        "first_name": "Erika",
        "last_name": "Beweis",
        "ip": "192.0.2.41",
        "at": f"2026-11-21T10:00:05{BERLIN_OFFSET}",
        "source": "https://www.example.de/newsletter-anmeldung",
        "policy_version": "2026-01",
    },
    {
        "type": "consent.confirm",
        "list": "newsletter",
        "email": ERIKA,
        "ip": "198.51.100.42",
        "at": f"2026-11-21T10:17:30{BERLIN_OFFSET}",
    },
    {
        "type": "consent.signup",
        "list": "service_offers",
        "email": ERIKA,
        "first_name": "Erika",
        "last_name": "Beweis",
        "insurance_number": "A123456780",
        "ip": "192.0.2.43",
        "at": f"2026-11-22T08:00:00{BERLIN_OFFSET}",
        "source": "https://www.example.de/serviceangebote",
        "policy_version": "2026-01",
    },
    {
        "type": "consent.confirm",
        "list": "service_offers",
        "email": ERIKA,
        "ip": "198.51.100.44",
        "at": f"2026-11-22T08:05:00{BERLIN_OFFSET}",
    },
    {
        "type": "consent.withdraw",
        "list": "service_offers",
        "email": ERIKA,
        "channel": "email",
        "at": f"2026-11-30T14:45:00{BERLIN_OFFSET}",
    },
]
# Someone else on the newsletter, at the same times: nothing of theirs may show.
MAX_EVENTS = [
    {
        **ERIKA_EVENTS[0],
        "email": MAX,
        "first_name": "Maximilian",
        "last_name": "Andersson",
        "salutation": "Herr",
        "ip": "203.0.113.77",
        "source": "https://www.example.de/maxquelle",
    },
    {**ERIKA_EVENTS[1], "email": MAX, "ip": "203.0.113.78"},
]
MAX_MARKERS = (MAX, "max.anderer", "Maximilian", "Andersson", "203.0.113.77", "203.0.113.78", "maxquelle", "Herr")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def take_in(settings, events: list[dict]) -> list[str]:
    with transaction() as session:
        results = intake_lines(session, settings.hmac_key(), [json.dumps(e) for e in events], now=NOW)
    return [r.outcome for r in results]


@pytest.fixture
def subscribers(settings):
    assert take_in(settings, ERIKA_EVENTS + MAX_EVENTS) == ["stored"] * 7
    return settings


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


# consent texts by version ---------------------------------------------------------------------
def test_a_fresh_database_holds_the_shipped_version(settings):
    with transaction() as session:
        [row] = all_texts(session)
    [first] = shipped()
    assert (row.version, row.effective_from) == ("2026-01", date(2026, 1, 1)) == (first.version, first.effective_from)
    assert row.consent_sha256 == sha256((SHIPPED / "2026-01" / "consent.txt").read_text(encoding="utf-8"))
    assert row.mail_sha256 == sha256(row.mail_text) and "Double-Opt-In" in row.mail_text
    with transaction() as session:
        assert register_shipped(session) == []  # `psync db upgrade` again: nothing new


def test_a_registered_text_never_changes(settings):
    with transaction() as session:
        first = register(session, "2026-02", "Einwilligung A", "Mail A", date(2026, 2, 1))
        assert first.created
    with transaction() as session:
        again = register(session, "2026-02", "Einwilligung A", "Mail A", date(2026, 2, 1))
        assert not again.created
    for changed in (
        ("Einwilligung B", "Mail A", date(2026, 2, 1)),
        ("Einwilligung A", "Mail B", date(2026, 2, 1)),
        ("Einwilligung A", "Mail A", date(2026, 3, 1)),
    ):
        with pytest.raises(TextConflict, match="register the new text under a new version"), transaction() as session:
            register(session, "2026-02", *changed)
    with transaction() as session:
        row = session.get(ConsentText, "2026-02")
        assert row is not None
        assert (row.consent_text, row.mail_text, row.effective_from) == ("Einwilligung A", "Mail A", date(2026, 2, 1))
    for bad in ("", "two words", "../x", "x" * 101):
        with pytest.raises(ValueError, match="version"), transaction() as session:
            register(session, bad, "a", "b", date(2026, 2, 1))
    with pytest.raises(ValueError, match="consent text: empty"), transaction() as session:
        register(session, "2026-03", "  \n", "b", date(2026, 2, 1))


def test_a_shipped_text_edited_after_registration_is_refused(settings, tmp_path):
    (tmp_path / "2026-01").mkdir()
    (tmp_path / "versions.toml").write_text('["2026-01"]\neffective_from = 2026-01-01\n')
    (tmp_path / "2026-01" / "consent.txt").write_text("Ein nachträglich geänderter Text")
    (tmp_path / "2026-01" / "mail.txt").write_text((SHIPPED / "2026-01" / "mail.txt").read_text(encoding="utf-8"))
    with pytest.raises(TextConflict, match="another consent text"), transaction() as session:
        register_shipped(session, tmp_path)


def test_the_texts_commands(settings, runner, tmp_path):
    consent, mail = tmp_path / "consent.txt", tmp_path / "mail.txt"
    consent.write_text("Ja, ich möchte den Newsletter (Fassung 2026-02).\r\n", encoding="utf-8")
    mail.write_text("Bitte bestätigen Sie: [Link]\n", encoding="utf-8")
    args = ["consent", "texts", "add", "--version", "2026-02", "--consent-file", str(consent), "--mail-file"]
    result = runner.invoke(app, [*args, str(mail), "--effective-from", "2026-02-01"])
    assert result.exit_code == 0 and "registered" in result.output, result.output
    again = runner.invoke(app, [*args, str(mail), "--effective-from", "2026-02-01"])
    assert again.exit_code == 0 and "already registered with these texts" in again.output
    consent.write_text("Ein anderer Text", encoding="utf-8")
    refused = runner.invoke(app, [*args, str(mail), "--effective-from", "2026-02-01"])
    assert refused.exit_code == 1 and "a registered text never changes" in refused.output, refused.output
    listed = runner.invoke(app, ["consent", "texts", "list", "--json"])
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [r["version"] for r in rows] == ["2026-01", "2026-02"]
    # CRLF stored as LF, and the hash is over what is stored.
    assert rows[1]["consent_sha256"] == sha256("Ja, ich möchte den Newsletter (Fassung 2026-02).\n")
    shown = runner.invoke(app, ["consent", "texts", "show", "2026-02"])
    assert "Ja, ich möchte den Newsletter (Fassung 2026-02)." in shown.output and "[Link]" in shown.output
    with transaction() as session:
        audit = session.exec(select(AuditEntry.action, AuditEntry.outcome).where(AuditEntry.action == "consent.text"))
        assert sorted(audit) == [("consent.text", "registered"), ("consent.text", "unchanged")]


# intake refuses an unknown version --------------------------------------------------------------
def snapshot() -> dict[str, int]:
    with transaction() as session:
        return {
            t: session.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("data_subject", "consent", "consent_event", "intake_receipt")
        }


def test_file_intake_refuses_an_unknown_or_missing_version_and_changes_nothing(settings, runner, tmp_path):
    unknown = {**ERIKA_EVENTS[0], "policy_version": "2099-99"}
    missing = {k: v for k, v in ERIKA_EVENTS[0].items() if k != "policy_version"}
    path = tmp_path / "events.jsonl"
    path.write_text(f"{json.dumps(unknown)}\n{json.dumps(missing)}\n", encoding="utf-8")
    before = snapshot()
    result = runner.invoke(app, ["intake", str(path)])
    assert result.exit_code == 1
    assert "events.jsonl:1: rejected: policy_version: no consent text is registered for this version" in result.output
    assert "events.jsonl:2: rejected: policy_version: Field required" in result.output
    assert "2099-99" not in result.output and ERIKA not in result.output
    assert snapshot() == before
    # Once the version is registered, the same line is taken.
    with transaction() as session:
        register(session, "2099-99", "Text", "Mail", date(2026, 1, 1))
    path.write_text(json.dumps(unknown) + "\n", encoding="utf-8")
    assert runner.invoke(app, ["intake", str(path)]).exit_code == 0


def test_the_versions_are_looked_up_once_per_chunk(settings, monkeypatch):
    import intake.consent

    calls = []
    real = intake.consent.known_versions
    monkeypatch.setattr(intake.consent, "known_versions", lambda s, v: calls.append(set(v)) or real(s, v))
    events = [{**ERIKA_EVENTS[0], "email": f"p{n}@example.de"} for n in range(50)]
    events += [{**ERIKA_EVENTS[0], "email": "x@example.de", "policy_version": "nope"}]
    assert take_in(settings, events) == ["stored"] * 50 + ["rejected"]
    assert calls == [{"2026-01", "nope"}]


def test_the_http_door_refuses_an_unknown_version_and_changes_nothing(settings):
    secret = b"proof-door-secret"
    clock = Clock(NOW)
    config = DoorConfig(
        secret=secret,
        key=TEST_KEY.encode(),
        document_key=Fernet.generate_key(),
        rate_per_second=1000.0,
        rate_burst=1000,
        max_document_bytes=4096,
        clock=clock,
    )
    before = snapshot()
    with ExitStack() as stack:
        url = stack.enter_context(serve_door(config))
        answer = post_signed(url, [{**ERIKA_EVENTS[0], "policy_version": "1999-01"}], secret, NOW)
        assert answer.status_code == 200, answer.text
        [result] = answer.json()["results"]
        assert result["result"] == "rejected"
        assert result["reason"].startswith("policy_version: no consent text is registered")
        assert ERIKA not in answer.text and "1999-01" not in answer.text
        assert snapshot() == before
        good = post_signed(url, [ERIKA_EVENTS[0]], secret, NOW + timedelta(seconds=1))
        assert [r["result"] for r in good.json()["results"]] == ["stored"]


# the proof ------------------------------------------------------------------------------------
def test_the_proof_for_an_active_and_a_withdrawn_subscription(subscribers, runner, tmp_path):
    html_file = tmp_path / "nachweis.html"
    result = runner.invoke(app, ["consent", "proof", "--email", "Erika.Beweis@Example.de", "--html", str(html_file)])
    assert result.exit_code == 0, result.output
    md = result.stdout
    newsletter, offers = md.split("## Newsletter")[1].split("## Mehrwert- und Serviceangebote")
    # The newsletter: confirmed and standing; dates and times with zone, in Berlin and UTC.
    assert "bestätigt, Einwilligung erteilt (confirmed)" in newsletter
    assert "21.11.2026 10:00:05 CET (Europe/Berlin, UTC+01:00) = 2026-11-21 09:00:05 UTC" in newsletter
    assert "21.11.2026 10:17:30 CET (Europe/Berlin, UTC+01:00) = 2026-11-21 09:17:30 UTC" in newsletter
    assert "| IP-Adresse bei der Anmeldung | 192.0.2.41 |" in newsletter
    assert "| IP-Adresse bei der Bestätigung | 198.51.100.42 |" in newsletter
    assert "https://www.example.de/newsletter-anmeldung" in newsletter
    assert "| Fassung des Einwilligungstexts | 2026-01, gültig ab 01.01.2026 |" in newsletter
    assert "| Widerruf | kein Widerruf |" in newsletter
    # Service offers: confirmed, then withdrawn by e-mail.
    assert "widerrufen (withdrawn)" in offers
    assert "192.0.2.43" in offers and "198.51.100.44" in offers and "serviceangebote" in offers
    assert "30.11.2026 14:45:00 CET (Europe/Berlin, UTC+01:00) = 2026-11-30 13:45:00 UTC" in offers
    assert "| Widerruf (Weg) | per E-Mail (email) |" in offers
    assert offers.count("| Bestätigung (Double-Opt-In) |") == 1 and offers.count("| Widerruf |") == 1
    # The texts of the version, as registered, once.
    with transaction() as session:
        registered = session.get(ConsentText, "2026-01")
        assert registered is not None
    assert md.count("## Texte der Fassung 2026-01") == 1
    assert registered.consent_sha256 in md and registered.mail_sha256 in md
    assert registered.consent_text.strip() in md and registered.mail_text.strip() in md
    assert ERIKA in md and "| Betroffene Person | Erika Beweis |" in md  # the newest sign-up names her
    # The HTML says the same, self-contained.
    page = html_file.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http-equiv" not in page
    assert "src=" not in page and "<link" not in page
    for fact in ("192.0.2.41", "198.51.100.44", "2026-11-30 13:45:00 UTC", registered.mail_sha256, "per E-Mail"):
        assert fact in page
    # Nothing of anyone else, in either.
    for marker in MAX_MARKERS:
        assert marker not in md and marker not in page, marker
    # The audit: who was looked up (by pseudonym), how many lists; no address.
    with transaction() as session:
        [entry] = session.exec(select(AuditEntry).where(AuditEntry.action == "consent.proof")).all()
        erika = session.exec(select(DataSubject).where(DataSubject.email == ERIKA)).one()
    assert (entry.outcome, entry.subject_pseudonym) == ("found", erika.pseudonym)
    assert "lists=2" in entry.detail and "events=5" in entry.detail and "erika" not in entry.detail.lower()


def test_html_escapes_what_the_website_sent(subscribers):
    with transaction() as session:
        proof = gather(session, ERIKA, subscribers.hmac_key(), NOW)
    proof.lists[0] = type(proof.lists[0])(
        **{**proof.lists[0].__dict__, "source": "https://x.de/?a=<script>alert(1)</script>"}
    )
    page = render_html(proof)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_an_erased_person_has_no_proof_and_an_unknown_one_none(subscribers, runner):
    with transaction() as session:
        erika = session.exec(select(DataSubject).where(DataSubject.email == ERIKA)).one()
        erase_controller_copy(session, erika.id, NOW)
    erased = runner.invoke(app, ["consent", "proof", "--email", ERIKA])
    assert erased.exit_code == 0, erased.output
    assert "wurden am 01.12.2026 13:00:00 CET" in erased.stdout and "kein Nachweis" in erased.stdout
    for gone in (ERIKA, "Erika", "Beweis", "192.0.2.41", "198.51.100.42", "newsletter-anmeldung", "## Newsletter"):
        assert gone not in erased.stdout, gone
    unknown = runner.invoke(app, ["consent", "proof", "--email", "niemand@example.de"])
    assert "Zu dieser E-Mail-Adresse liegen keine Daten vor." in unknown.stdout
    bad = runner.invoke(app, ["consent", "proof", "--email", "kein-at-zeichen"])
    assert bad.exit_code == 2 and "not a valid e-mail address" in bad.output and "kein-at" not in bad.output
    with transaction() as session:
        outcomes = sorted(session.exec(select(AuditEntry.outcome).where(AuditEntry.action == "consent.proof")))
    assert outcomes == ["erased", "unknown"]


def test_out_writes_the_proof_encrypted_to_the_outbox(subscribers, runner, tmp_path, monkeypatch):
    monkeypatch.setenv("PSYNC_RIGHTS_OUTBOX", str(tmp_path / "outbox"))
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", Fernet.generate_key().decode())
    get_settings.cache_clear()
    result = runner.invoke(app, ["consent", "proof", "--email", ERIKA, "--out"])
    assert result.exit_code == 0, result.output
    assert ERIKA not in result.output and "found, 2 list(s)" in result.output
    [folder] = (tmp_path / "outbox").iterdir()
    assert folder.name.startswith("consent-proof-") and "erika" not in folder.name
    assert sorted(p.name for p in folder.iterdir()) == ["nachweis.html.enc", "nachweis.md.enc", "written_at"]
    for path in folder.iterdir():
        raw = path.read_bytes()
        assert b"192.0.2.41" not in raw and b"Erika" not in raw
        assert path.stat().st_mode & 0o077 == 0
    md = read_outbox_file(folder / "nachweis.md.enc").decode()
    assert "192.0.2.41" in md and "198.51.100.44" in md
    opened = runner.invoke(app, ["consent", "read", str(folder / "nachweis.md.enc")])
    assert opened.stdout == md


# the officer's form in the Prefect UI ---------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_writes_the_proof_and_keeps_no_address(subscribers, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PSYNC_RIGHTS_OUTBOX", str(tmp_path / "outbox"))
    get_settings.cache_clear()
    old = tmp_path / "outbox" / "consent-proof-old"
    old.mkdir(parents=True)
    (old / "nachweis.md.enc").write_bytes(b"x")
    import os

    os.utime(old, (0, 0))  # older than PSYNC_RIGHTS_OUTBOX_DAYS: purged by the next proof
    state = consent_proof(email=ERIKA, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == {"lists": 2, "events": 5, "found": 1}
    [folder] = (tmp_path / "outbox").iterdir()
    assert "192.0.2.41" in read_outbox_file(folder / "nachweis.html.enc").decode()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        artifacts = client.read_artifacts()
    assert run.parameters == {"email": ""}
    [artifact] = [a for a in artifacts if a.flow_run_id == run_id]
    assert folder.name in artifact.data and "| Listen / Lists | 2 |" in artifact.data
    for leaked in (ERIKA, "erika", "Beweis", "192.0.2.41", "198.51.100"):
        assert leaked not in artifact.data and leaked not in caplog.text and leaked not in (run.name or "")
    # A bad address is refused, and still not kept.
    refused = consent_proof(email="erika-ohne-at", return_state=True)
    assert refused.is_failed() and "not a valid e-mail address" in (refused.message or "")
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(refused.state_details.flow_run_id).parameters == {"email": ""}


def test_the_proof_reads_only_this_persons_rows(subscribers):
    """The builder's queries: by this subject's id (and this person's consent ids) only."""
    with transaction() as session:
        erika = session.exec(select(DataSubject).where(DataSubject.email == ERIKA)).one()
        records = session.exec(select(func.count()).where(ConsentRecord.subject_id == erika.id)).one()
        events = session.exec(
            select(func.count())
            .select_from(ConsentEvent)
            .join(ConsentRecord, ConsentRecord.id == ConsentEvent.consent_id)
            .where(ConsentRecord.subject_id == erika.id)
        ).one()
        proof = issue_proof(session, ERIKA)
    assert (len(proof.lists), proof.events) == (records, events) == (2, 5)
    assert {e.ip for p in proof.lists for e in p.events} == {
        "192.0.2.41",
        "198.51.100.42",
        "192.0.2.43",
        "198.51.100.44",
        None,
    }


def test_an_address_opens_only_the_proof_of_whoever_holds_it(subscribers):
    """A subject first seen with an address (its pseudonym) that now holds another one (a
    rectified address) is not found by the old address."""
    with transaction() as session:
        erika = session.exec(select(DataSubject).where(DataSubject.email == ERIKA)).one()
        erika.email = "erika.neu@example.de"
    with transaction() as session:
        assert gather(session, ERIKA, subscribers.hmac_key(), NOW).status == "unknown"
        assert gather(session, "erika.neu@example.de", subscribers.hmac_key(), NOW).status == "found"


def test_the_proof_after_an_address_correction_says_when_and_by_which_request_not_the_old_address(
    subscribers, runner, monkeypatch
):
    from sqlmodel import SQLModel

    from flows import rights
    from flows.consent_proof import when
    from models.rights import RightsRequest

    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", Fernet.generate_key().decode())
    get_settings.cache_clear()
    new = "erika.neu@example.de"
    with transaction() as session:
        rid = rights.open_request(
            session, right="rectification", email=ERIKA, channel="letter", changes={"email": new}
        ).id
    assert rights.handle([rid])["completed"] == 1
    with transaction() as session:
        done = session.get(RightsRequest, rid)
        assert done.corrected == "email" and done.changes is None  # the names stay, the values go
        completed_at = done.completed_at

    result = runner.invoke(app, ["consent", "proof", "--email", new])
    assert result.exit_code == 0, result.output
    md = result.stdout
    assert f"| E-Mail-Adresse | {new} |" in md
    said = f"| E-Mail-Adresse berichtigt | am {when(completed_at)} (Berichtigungsantrag {rid}, Art. 16 DSGVO) |"
    assert said in md
    assert "192.0.2.41" in md and "198.51.100.42" in md  # the consent's evidence stands
    assert ERIKA not in md and "erika.beweis" not in md.lower()
    # The old address opens nothing, and is kept in clear nowhere.
    old = runner.invoke(app, ["consent", "proof", "--email", ERIKA])
    assert "Zu dieser E-Mail-Adresse liegen keine Daten vor." in old.stdout
    with transaction() as session:
        for table in SQLModel.metadata.sorted_tables:
            for row in session.execute(table.select()):
                assert "erika.beweis" not in repr(tuple(row)).lower(), table.name
    # A correction of the name only says nothing about the address.
    with transaction() as session:
        other = rights.open_request(
            session, right="rectification", email=new, channel="letter", changes={"last_name": "Neumann"}
        ).id
    assert rights.handle([other])["completed"] == 1
    assert runner.invoke(app, ["consent", "proof", "--email", new]).stdout.count("E-Mail-Adresse berichtigt") == 1
