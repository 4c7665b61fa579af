"""The psync command line: intake, audit verify/export, db upgrade."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import inspect, text
from sqlmodel import SQLModel
from typer.testing import CliRunner

from core.clock import berlin_today
from core.settings import get_settings
from models.audit import FIELDS
from models.db import get_engine, transaction
from psync.cli import app

from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES, isic_order

# Fixed past times: the CLI compares against the real clock (future lines are refused).
AT = "2025-06-01T10:00:00+02:00"
AT_CONFIRM = "2025-06-01T10:20:00+02:00"
COLUMNS = [*FIELDS, "prev_hash", "hash"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def signup(email: str) -> str:
    return json.dumps(
        {
            "type": "consent.signup",
            "list": "newsletter",
            "email": email,
            "first_name": "Erika",
            "last_name": "Mustermann",
            "ip": "192.0.2.10",
            "at": AT,
            "source": "https://example.de/nl",
            "policy_version": "2026-01",
        }
    )


def confirm(email: str) -> str:
    return json.dumps(
        {
            "type": "consent.confirm",
            "list": "newsletter",
            "email": email,
            "ip": "192.0.2.11",
            "at": AT_CONFIRM,
        }
    )


def write(tmp_path, *lines, name="events.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def count(table: str) -> int:
    with transaction() as session:
        return session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_intake_good_file(settings, runner, tmp_path):
    path = write(tmp_path, signup("erika@example.de"), confirm("erika@example.de"))
    result = runner.invoke(app, ["intake", str(path)])
    assert result.exit_code == 0, result.output
    assert "stored=2 unchanged=0 duplicate=0 rejected=0" in result.stdout
    assert result.stderr == ""
    assert count("consent_event") == 2

    again = runner.invoke(app, ["intake", str(path)])
    assert again.exit_code == 0
    assert "stored=0 unchanged=0 duplicate=2 rejected=0" in again.stdout


def test_intake_bad_line_exits_1_and_keeps_the_good(settings, runner, tmp_path):
    path = write(
        tmp_path,
        signup("erika@example.de"),
        signup("mustermann.example.de"),
        confirm("max@example.de"),
        confirm("erika@example.de"),
    )
    result = runner.invoke(app, ["intake", str(path)])
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 1
    assert errors[0].startswith("events.jsonl:2: rejected: email")
    assert "mustermann" not in result.stderr and "max@" not in result.stderr
    assert "stored=2 unchanged=0 duplicate=0 rejected=1 pending=1" in result.stdout
    assert "rejected:" not in result.stdout
    assert count("data_subject") == 2  # Max's confirmation waits under his address's pseudonym
    assert count("consent_event") == 3


def order_line(order_id: str, proof: str, copy: str, photo: str) -> str:
    return json.dumps(isic_order(order_id, AT, documents={"student_proof": proof, "id_copy": copy, "photo": photo}))


def test_intake_removes_the_uploads_of_stored_orders_only_when_asked(settings, runner, tmp_path, monkeypatch):
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", Fernet.generate_key().decode())
    get_settings.cache_clear()
    uploads = {
        "n1.pdf": PDF_BYTES,
        "a1.png": PNG_BYTES,
        "f1.jpg": JPEG_BYTES,
        "n2.pdf": PDF_BYTES + b"\n% another proof",  # another order under O-1's id, not O-1 again
        "a2.png": PNG_BYTES,
        "n3.pdf": PDF_BYTES,
    }
    for name, content in uploads.items():
        (tmp_path / name).write_bytes(content)
    # The second line reuses the order id (rejected when stored) and shares the photo; the
    # third fails validation (a postal code of four digits) and shares the ID copy.
    invalid = json.loads(order_line("O-3", "n3.pdf", "a1.png", "f1.jpg")) | {"postal_code": "1011"}
    path = write(
        tmp_path,
        order_line("O-1", "n1.pdf", "a1.png", "f1.jpg"),
        order_line("O-1", "n2.pdf", "a2.png", "f1.jpg"),
        json.dumps(invalid),
    )

    kept = runner.invoke(app, ["intake", str(path)])
    assert kept.exit_code == 1
    assert "stored=1 unchanged=0 duplicate=0 rejected=2" in kept.stdout
    assert "note: 1 uploaded document(s)" in kept.stderr and "--remove-documents" in kept.stderr
    assert all((tmp_path / name).exists() for name in uploads)

    removed = runner.invoke(app, ["intake", str(path), "--remove-documents"])
    assert removed.exit_code == 1  # the rejected lines again
    assert "duplicate=1 rejected=2 pending=0 documents_removed=1" in removed.stdout
    assert "note:" not in removed.stderr
    # The stored order's own file is gone; what the rejected lines name stays to be fixed.
    left = ["a1.png", "a2.png", "f1.jpg", "n2.pdf", "n3.pdf"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name in uploads) == left
    assert count("isic_document") == 3


def test_intake_without_file_is_a_usage_error(settings, runner):
    result = runner.invoke(app, ["intake"])
    assert result.exit_code == 2
    assert "FILE" in result.output


def test_intake_schema(runner):
    result = runner.invoke(app, ["intake", "--schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["discriminator"]["propertyName"] == "type"
    assert {"ConsentSignup", "ConsentConfirm", "ConsentWithdraw"} <= set(schema["$defs"])


def _audited(settings, runner, tmp_path) -> None:
    path = write(
        tmp_path,
        signup("erika@example.de"),
        confirm("erika@example.de"),
        signup("max@example.de"),
    )
    assert runner.invoke(app, ["intake", str(path)]).exit_code == 0
    assert count("audit_entry") == 3


def test_audit_verify_intact(settings, runner, tmp_path):
    _audited(settings, runner, tmp_path)
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0
    assert "intact: 3 rows" in result.stdout


def test_audit_verify_names_the_altered_row(settings, runner, tmp_path):
    _audited(settings, runner, tmp_path)
    with transaction() as session:
        session.execute(text("UPDATE audit_entry SET outcome = 'forged' WHERE id = 2"))
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 1
    assert "BROKEN at row 2" in result.stderr
    assert "1 rows verified" in result.stderr


def test_audit_export_csv(settings, runner, tmp_path):
    _audited(settings, runner, tmp_path)
    result = runner.invoke(app, ["audit", "export", "--format", "csv"])
    assert result.exit_code == 0
    reader = csv.DictReader(io.StringIO(result.stdout))
    rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert "@" not in result.stdout


def test_audit_export_jsonl(settings, runner, tmp_path):
    _audited(settings, runner, tmp_path)
    result = runner.invoke(app, ["audit", "export", "--format", "jsonl"])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert all(list(r) == COLUMNS for r in rows)
    assert [r["action"] for r in rows] == ["consent.signup", "consent.confirm", "consent.signup"]


def test_audit_export_to_file(settings, runner, tmp_path):
    _audited(settings, runner, tmp_path)
    out = tmp_path / "audit.csv"
    result = runner.invoke(app, ["audit", "export", "-f", "csv", "-o", str(out)])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4


@pytest.mark.sqlite_only("creates its own SQLite file")
def test_db_upgrade_on_a_fresh_file(settings, runner, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/fresh/upgrade.db"
    monkeypatch.setenv("PSYNC_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert "database at head" in result.stdout
        tables = set(inspect(get_engine(url)).get_table_names())
        assert set(SQLModel.metadata.tables) <= tables
        assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    finally:
        get_engine(url).dispose()


def test_intake_line_in_wrong_encoding_is_rejected_alone(settings, runner, tmp_path):
    path = tmp_path / "events.jsonl"
    bad = signup("jörg@example.de").replace("Mustermann", "Müller").encode("latin-1")
    path.write_bytes(
        signup("erika@example.de").encode() + b"\n" + bad + b"\n" + confirm("erika@example.de").encode() + b"\n"
    )
    result = runner.invoke(app, ["intake", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("events.jsonl:2: rejected:")
    assert count("consent_event") == 2


def test_erasure_request_for_an_unknown_subject_is_a_clear_error_and_changes_nothing(settings, runner):
    result = runner.invoke(app, ["erasure", "request", "--email", "nobody@example.de", "--no-fan-out"])
    assert result.exit_code == 1 and "error:" in result.output
    assert "nobody@example.de" not in result.output
    with transaction() as session:
        assert session.execute(text("SELECT count(*) FROM erasure_request")).scalar_one() == 0


def test_erasure_request_report_and_extend_from_the_command_line(settings, runner, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(signup("erika@example.de") + "\n")
    assert runner.invoke(app, ["intake", str(events)]).exit_code == 0
    opened = runner.invoke(
        app,
        [
            "erasure",
            "request",
            "--email",
            "Erika@Example.de",
            "--channel",
            "letter",
            "--reference",
            "AZ 17/26",
            "--no-fan-out",
        ],
    )
    assert opened.exit_code == 0, opened.output
    request_id = opened.output.split()[1]
    report = json.loads(runner.invoke(app, ["erasure", "report", request_id, "--format", "json"]).output)
    assert report["request_id"] == request_id and "erika" not in json.dumps(report).lower()
    markdown = runner.invoke(app, ["erasure", "report", request_id])
    assert markdown.exit_code == 0 and request_id in markdown.output
    bad = runner.invoke(
        app, ["erasure", "extend", request_id, "--months", "1", "--reason", " ", "--informed-on", "2026-01-01"]
    )
    assert bad.exit_code == 1 and "reason" in bad.output
    assert runner.invoke(app, ["erasure", "status", "00000000-0000-0000-0000-000000000000"]).exit_code == 1


# psync request ------------------------------------------------------------------------------------
def test_rights_request_from_the_command_line_list_extend_and_show(settings, runner, tmp_path, prefect_harness):
    events = tmp_path / "events.jsonl"
    events.write_text(signup("erika@example.de") + "\n")
    assert runner.invoke(app, ["intake", str(events)]).exit_code == 0
    opened = runner.invoke(
        app, ["request", "portability", "--email", "Erika@Example.de", "--channel", "letter", "--reference", "AZ 9/26"]
    )
    assert opened.exit_code == 0, opened.output
    request_id = opened.output.split()[1]
    assert '"portability_exports": 1' in opened.output and "written (encrypted)" in opened.output
    assert "erika" not in opened.output.lower()
    listed = runner.invoke(app, ["request", "list", "--status", "all"])
    assert listed.exit_code == 0 and request_id in listed.output and "completed" in listed.output
    [row] = [line.split("\t") for line in listed.output.splitlines() if line.startswith(request_id)]
    assert row[-2:] == ["letter", "AZ 9/26"]  # how the officer finds the letter it answers
    assert runner.invoke(app, ["request", "list"]).output.strip() == "no requests"  # none open
    # Received at 23:30 UTC on 31 October is a Berlin 1 November: the day the month counts from.
    late = runner.invoke(
        app, ["request", "objection", "--email", "erika@example.de", "--received-at", "2026-11-01 00:30", "--no-answer"]
    )
    assert late.exit_code == 0, late.output
    [row] = [line.split("\t") for line in runner.invoke(app, ["request", "list"]).output.splitlines()[1:]]
    assert row[3:5] == ["2026-11-01", "2026-12-01"]
    files = runner.invoke(app, ["request", "show", request_id])
    assert files.exit_code == 0 and "portability.json" in files.output.split()
    shown = runner.invoke(app, ["request", "show", request_id, "--file", "portability.json"])
    assert json.loads(shown.stdout)["profile"][0]["email"] == "erika@example.de"
    out = tmp_path / "export.json"
    assert (
        runner.invoke(app, ["request", "show", request_id, "--file", "portability.json", "--out", str(out)]).exit_code
        == 0
    )
    assert json.loads(out.read_text())["schema"] == "psync.portability/1"
    # Completed: nothing to extend; an open one can be.
    done = runner.invoke(
        app, ["request", "extend", request_id, "--months", "1", "--reason", "Rückfragen", "--informed-on", "2026-01-01"]
    )
    assert done.exit_code == 1 and "completed" in done.output
    waiting = runner.invoke(app, ["request", "access", "--email", "erika@example.de", "--no-answer"])
    access_id = waiting.output.split()[1]
    # The controller's calendar day: from 23:00 UTC (22:00 in summer) it is already tomorrow
    # in Berlin, the day the request counts as received on.
    today = berlin_today(datetime.now(UTC)).isoformat()
    extended = runner.invoke(
        app, ["request", "extend", access_id, "--months", "2", "--reason", "viele Empfänger", "--informed-on", today]
    )
    assert extended.exit_code == 0 and "now due" in extended.output, extended.output


def test_rights_request_for_an_unknown_subject_is_a_clear_error_and_changes_nothing(settings, runner):
    result = runner.invoke(app, ["request", "access", "--email", "nobody@example.de", "--no-answer"])
    assert result.exit_code == 1 and "error:" in result.output and "nobody@example.de" not in result.output
    assert runner.invoke(app, ["request", "show", "00000000-0000-0000-0000-000000000000"]).exit_code == 1
    with transaction() as session:
        assert session.execute(text("SELECT count(*) FROM rights_request")).scalar_one() == 0
