"""The audit trail's anchor outside the database (issue 16): each tampering that the head
row alone cannot show (a wiped trail, a missing head, a truncation with an older head put
back, a chain rebuilt with the key) is found against the anchor and named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, insert, select, text
from typer.testing import CliRunner

from core.settings import get_settings
from models.audit import (
    HEAD_MISSING,
    REWRITTEN,
    TRUNCATED,
    WIPED,
    AuditEvent,
    AuditHead,
    append,
    append_anchor,
    current_anchor,
    latest_anchor,
    verify_against,
)
from models.db import transaction
from psync.cli import app

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
HEAD = AuditHead.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it


def events(n: int, action: str = "consent.push") -> list[AuditEvent]:
    return [AuditEvent(action, "ok", processor="cleverreach", subject=f"{i:032x}") for i in range(n)]


@pytest.fixture
def anchored(settings, monkeypatch, tmp_path):
    """Settings with an anchor file; returns its path."""
    path = tmp_path / "elsewhere" / "audit-anchor.jsonl"
    path.parent.mkdir()
    monkeypatch.setenv("PSYNC_AUDIT_ANCHOR", str(path))
    get_settings.cache_clear()
    return path


def write(n: int, at: datetime = NOW, action: str = "consent.push") -> None:
    with transaction() as session:
        append(session, get_settings().hmac_key(), events(n, action), now=at)


def anchor_now(path) -> None:
    with transaction() as session:
        append_anchor(path, current_anchor(session, get_settings().hmac_key(), "run-1", now=NOW))


def cli(*args: str):
    return CliRunner().invoke(app, ["audit", "verify", *args])


def sql(*statements: str) -> None:
    with transaction() as session:
        for statement in statements:
            session.execute(text(statement))


def test_an_intact_trail_matches_its_anchor(anchored):
    write(3)
    anchor_now(anchored)
    write(2, NOW + timedelta(minutes=1))  # rows after the anchor are fine
    result = cli()
    assert result.exit_code == 0, result.output
    assert "audit trail intact: 5 rows" in result.stdout and "matches the audit anchor" in result.stdout
    [line] = anchored.read_text().splitlines()
    assert json.loads(line)["rows"] == 3 and "@" not in line


def test_without_an_anchor_it_says_so_and_an_intact_chain_still_exits_0(settings):
    write(3)
    sql("DELETE FROM audit_entry", "DELETE FROM audit_head")
    result = cli()
    assert result.exit_code == 0
    assert result.stdout.strip() == "audit trail intact: 0 rows"
    assert "no audit anchor configured (PSYNC_AUDIT_ANCHOR)" in result.stderr


def test_a_wiped_trail_is_named(anchored):
    write(4)
    anchor_now(anchored)
    sql("DELETE FROM audit_entry", "DELETE FROM audit_head")
    result = cli()
    assert result.exit_code == 1
    assert f"BROKEN at row 1: {WIPED}: no rows, the anchor of" in result.stderr and "vouches for 4" in result.stderr


def test_a_missing_head_is_named(anchored):
    write(4)
    anchor_now(anchored)
    sql("DELETE FROM audit_head")
    result = cli()
    assert result.exit_code == 1
    assert f"BROKEN: {HEAD_MISSING}" in result.stderr


def test_a_truncation_with_an_older_head_put_back_is_named(anchored):
    write(2)
    with transaction() as session:  # the head as it was after two rows, seal and all
        old_head = dict(session.execute(select(HEAD)).mappings().one())
    write(3, NOW + timedelta(minutes=1))
    anchor_now(anchored)
    with transaction() as session:
        session.execute(text("DELETE FROM audit_entry WHERE id > 2"))
        session.execute(delete(HEAD))
        session.execute(insert(HEAD), [old_head])
    with transaction() as session:  # the head alone cannot tell: the chain is intact and sealed
        assert verify_against(session, get_settings().hmac_key(), None).ok
    result = cli()
    assert result.exit_code == 1
    assert f"BROKEN at row 3: {TRUNCATED}: the trail ends at row 2" in result.stderr
    assert "vouches for 5" in result.stderr


def test_a_chain_rebuilt_with_the_key_no_longer_matches_the_anchored_row(anchored):
    write(3)
    anchor_now(anchored)
    sql("DELETE FROM audit_entry", "DELETE FROM audit_head")
    write(3, action="consent.forged")
    result = cli()
    assert result.exit_code == 1
    assert f"BROKEN at row 3: {REWRITTEN}" in result.stderr


def test_an_edited_anchor_line_is_refused(anchored):
    write(3)
    anchor_now(anchored)
    anchored.write_text(anchored.read_text().replace('"rows": 3', '"rows": 1'))
    result = cli()
    assert result.exit_code == 1
    assert "audit anchor BROKEN: audit anchor line 1 is not sealed with this key" in result.stderr
    with pytest.raises(ValueError, match="not sealed"):
        latest_anchor(anchored, get_settings().hmac_key())


def test_the_anchor_vouching_for_most_rows_is_the_one_compared(anchored):
    # Two runs ending at once may append out of order.
    write(2)
    anchor_now(anchored)
    write(2, NOW + timedelta(minutes=1))
    with transaction() as session:
        newer = current_anchor(session, get_settings().hmac_key())
    older = anchored.read_text()
    anchored.write_text("")
    append_anchor(anchored, newer)
    anchored.write_text(anchored.read_text() + older)
    assert latest_anchor(anchored, get_settings().hmac_key()).rows == 4


def test_every_flow_run_appends_one_anchor_with_the_head_at_its_end(anchored, prefect_harness):
    from flows.student_id import purge_student_id_documents

    write(2)
    purge_student_id_documents()
    purge_student_id_documents()
    lines = [json.loads(line) for line in anchored.read_text().splitlines()]
    assert [line["rows"] for line in lines] == [2, 2]
    assert all(line["flow_run_id"] for line in lines) and lines[0]["flow_run_id"] != lines[1]["flow_run_id"]
    assert cli().exit_code == 0


def test_the_anchor_can_be_a_prefect_artifact_per_run(settings, monkeypatch, prefect_harness):
    from flows.common import artifact_anchor
    from flows.student_id import purge_student_id_documents

    monkeypatch.setenv("PSYNC_AUDIT_ANCHOR_ARTIFACT", "true")
    get_settings.cache_clear()
    write(3)
    purge_student_id_documents()
    anchor = artifact_anchor(get_settings().hmac_key())
    assert anchor is not None and anchor.rows == 3
    sql("DELETE FROM audit_entry WHERE id = 3", "DELETE FROM audit_head")
    result = cli()
    assert result.exit_code == 1 and HEAD_MISSING in result.stderr
