"""The audit trail: hash chain, tamper detection, export, and no personal data in it."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from flows.intake import intake_lines
from models.audit import FIELDS, AuditEntry, AuditEvent, _digest, append, export_rows, verify
from models.db import transaction

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def events(n: int, start: int = 1) -> list[AuditEvent]:
    return [
        AuditEvent(
            f"consent.push.{i}",
            "ok",
            processor="cleverreach",
            subject=f"{i:032x}",
            attempts=1,
            http_status=200,
            detail=f"list=newsletter batch={i}",
        )
        for i in range(start, start + n)
    ]


def chain(settings, n: int = 5) -> bytes:
    """n rows written in two appends (so the head carries over between transactions)."""
    key = settings.hmac_key()
    first = n // 2
    with transaction() as session:
        assert append(session, key, events(first), flow_run_id="run-1", now=NOW) == first
    with transaction() as session:
        append(session, key, events(n - first, first + 1), now=NOW + timedelta(minutes=1))
    return key


def sql(statement: str, **params):
    with transaction() as session:
        return session.execute(text(statement), params)


def check(key: bytes):
    with transaction() as session:
        return verify(session, key)


def test_clean_chain_verifies(settings):
    key = chain(settings, 5)
    result = check(key)
    assert result.ok is True
    assert result.checked == 5
    assert result.bad_id is None


def test_empty_chain_verifies(settings):
    result = check(settings.hmac_key())
    assert (result.ok, result.checked) == (True, 0)


def test_verify_in_small_chunks(settings):
    key = chain(settings, 7)
    with transaction() as session:
        assert verify(session, key, chunk=2).checked == 7


def test_another_key_does_not_verify(settings):
    chain(settings, 3)
    result = check(b"another-key")
    assert result.ok is False
    assert result.bad_id == 1


ALTERATIONS = {
    "at": "'2026-01-01 00:00:00.000000'",
    "flow_run_id": "'run-forged'",
    "action": "'consent.forged'",
    "processor": "'other'",
    "subject_pseudonym": "'ffffffffffffffffffffffffffffffff'",
    "outcome": "'failed'",
    "attempts": "7",
    "http_status": "500",
    "detail": "'list=service_offers'",
    "prev_hash": "'" + "1" * 64 + "'",
    "hash": "'" + "2" * 64 + "'",
}


@pytest.mark.parametrize("column", ALTERATIONS)
def test_altering_a_middle_row_names_it(settings, column):
    key = chain(settings, 5)
    sql(f"UPDATE audit_entry SET {column} = {ALTERATIONS[column]} WHERE id = 3")
    result = check(key)
    assert result.ok is False
    assert result.bad_id == 3
    assert result.checked == 2


def test_changing_a_row_id_names_it(settings):
    key = chain(settings, 5)
    sql("UPDATE audit_entry SET id = 99 WHERE id = 3")
    result = check(key)
    assert (result.ok, result.bad_id) == (False, 3)


def test_deleting_a_middle_row_names_it(settings):
    key = chain(settings, 5)
    sql("DELETE FROM audit_entry WHERE id = 3")
    result = check(key)
    assert (result.ok, result.bad_id, result.reason) == (False, 3, "row missing")


@pytest.mark.parametrize("removed", [1, 2, 5])
def test_deleting_the_last_rows_is_detected(settings, removed):
    key = chain(settings, 5)
    sql("DELETE FROM audit_entry WHERE id > :keep", keep=5 - removed)
    result = check(key)
    assert result.ok is False
    assert result.bad_id == 5 - removed + 1
    assert result.checked == 5 - removed


def forge_row_3() -> dict:
    """Alter row 3's detail and return the row as the hash function sees it."""
    sql("UPDATE audit_entry SET detail = 'list=forged' WHERE id = 3")
    with transaction() as session:
        return session.get(AuditEntry, 3).model_dump()


def test_rehashing_without_the_key_is_detected(settings):
    key = chain(settings, 5)
    row = forge_row_3()
    forged = _digest(b"attacker-guess", row["prev_hash"], row)
    sql("UPDATE audit_entry SET hash = :h WHERE id = 3", h=forged)
    result = check(key)
    assert (result.ok, result.bad_id) == (False, 3)


def test_rehashing_one_row_with_the_key_breaks_the_next(settings):
    key = chain(settings, 5)
    row = forge_row_3()
    sql("UPDATE audit_entry SET hash = :h WHERE id = 3", h=_digest(key, row["prev_hash"], row))
    result = check(key)
    assert (result.ok, result.bad_id) == (False, 4)


def test_truncation_with_a_rewritten_head_is_detected(settings):
    key = chain(settings, 5)
    sql("DELETE FROM audit_entry WHERE id > 3")
    sql("UPDATE audit_head SET last_id = 3, last_hash = (SELECT hash FROM audit_entry WHERE id = 3) WHERE id = 1")
    assert check(key).ok is False


def test_append_refuses_an_email_in_detail(settings):
    key = chain(settings, 2)
    bad = [*events(1, 10), AuditEvent("x", "ok", detail="sent to erika@example.de")]
    with pytest.raises(ValueError) as info, transaction() as session:
        append(session, key, bad)
    assert "erika" not in str(info.value)
    assert sql("SELECT count(*) FROM audit_entry").scalar_one() == 2
    assert check(key).ok is True


def test_export_rows_in_id_order_with_iso_times(settings):
    chain(settings, 5)
    with transaction() as session:
        rows = list(export_rows(session))
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert list(rows[0]) == [*FIELDS, "prev_hash", "hash"]
    assert datetime.fromisoformat(rows[0]["at"]) == NOW
    assert datetime.fromisoformat(rows[-1]["at"]) == NOW + timedelta(minutes=1)
    assert rows[0]["at"].endswith("+00:00")
    assert rows[0]["flow_run_id"] == "run-1" and rows[-1]["flow_run_id"] is None
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
    json.dumps(rows)  # plain values only


def test_intake_audit_rows_hold_no_personal_data(settings):
    def line(**kw):
        event = {
            "type": "consent.signup",
            "list": "service_offers",
            "email": "erika.m@example.de",
            "first_name": "Erika",
            "last_name": "Mustermann",
            "ip": "192.0.2.10",
            "insurance_number": "Z987654321",
            "at": (NOW - timedelta(hours=1)).isoformat(),
            "source": "https://example.de/so",
            "policy_version": "2026-01",
        }
        event.update(kw)
        return json.dumps({k: v for k, v in event.items() if v is not None})

    confirm = {
        "type": "consent.confirm",
        "list": "newsletter",
        "ip": "192.0.2.11",
        "at": (NOW - timedelta(minutes=30)).isoformat(),
    }
    lines = [
        line(),
        line(email="max.muster@example.de", list="newsletter", insurance_number=None),
        json.dumps({**confirm, "email": "max.muster@example.de"}),
        json.dumps({**confirm, "email": "nobody.here@example.de"}),  # kept for its sign-up
        line(email="other.person@example.de"),  # rejected: number belongs to Erika
    ]
    with transaction() as session:
        results = intake_lines(session, settings.hmac_key(), lines, now=NOW)
    assert [r.outcome for r in results] == ["stored", "stored", "stored", "pending", "rejected"]
    with transaction() as session:
        rows = session.execute(text("SELECT * FROM audit_entry")).all()
    assert len(rows) == 5
    dump = " ".join(str(value) for row in rows for value in row).lower()
    for secret in (
        "@",
        "example.de",
        "erika",
        "mustermann",
        "max.muster",
        "nobody",
        "other.person",
        "z987654321",
        "192.0.2.",
    ):
        assert secret not in dump
    assert check(settings.hmac_key()).ok


def test_append_hashes_awkward_values_exactly_as_verify_recomputes(settings):
    # append builds each row's payload from cached pieces; verify recomputes it the plain
    # way (_digest). Non-ASCII, quotes, backslashes, None and zero must come out the same.
    key = settings.hmac_key()
    odd = [
        AuditEvent("call.ünusual", "ok", detail='q"uote \\ back ß € \n line', attempts=0, http_status=0),
        AuditEvent("x", "ok", processor=None, subject=None, attempts=None, http_status=None),
        AuditEvent("x", "ok", processor="p", subject="Ünicode-pseudonym", attempts=3, http_status=429),
        AuditEvent("x", "ok", processor="p", subject="Ünicode-pseudonym", attempts=3, http_status=429),
    ]
    with transaction() as session:
        append(session, key, odd, flow_run_id="run-ß", now=NOW)
        append(session, key, odd[::-1], now=NOW + timedelta(microseconds=1))
    with transaction() as session:
        rows = list(export_rows(session))
    assert [r["action"] for r in rows] == [e.action for e in odd + odd[::-1]]
    for row in rows:
        hashed = {**row, "at": datetime.fromisoformat(row["at"])}
        assert _digest(key, row["prev_hash"], hashed) == row["hash"]
    assert check(key).ok
