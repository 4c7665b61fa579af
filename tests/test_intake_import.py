"""A file imported a chunk at a time (``flows.intake.import_lines``, ``psync intake``), at the
default chunk size: each chunk its own transaction, reported only once committed; bad lines
reported with their numbers across chunk boundaries; lines naming what comes later in the
file applied after it, whichever chunk; a re-import changes nothing; a process killed
mid-file loses nothing it reported stored, and running the file again stores the rest.
Documents are read from disk into their encryption a piece at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from flows.intake import import_lines
from intake.documents import Upload, check_document
from intake.lines import CHUNK
from models.audit import AuditEntry, verify
from models.consent import ConsentEvent
from models.db import transaction
from models.documents import JPEG, PDF, DocumentCipher, fernet_encrypt_stream

from support import JPEG_BYTES, PDF_BYTES, TEST_KEY

KEY = TEST_KEY.encode()
NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
BAD = {1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1}


def signup(i: int) -> dict:
    return {
        "type": "consent.signup",
        "list": "newsletter",
        "email": f"person{i}@example.de",
        "first_name": f"Vorname{i}",
        "last_name": "Muster",
        "ip": "192.0.2.1",
        "source": "https://example.de/nl",
        "policy_version": "2026-01",
        "at": (NOW - timedelta(days=1, seconds=-i)).isoformat(),
    }


def confirm(i: int) -> dict:
    # Apart by milliseconds: a confirmation a second apart each would lie in the future
    # beyond a few thousand lines (the default chunk is larger).
    at = NOW - timedelta(hours=1, milliseconds=-i)
    return {
        "type": "consent.confirm",
        "list": "newsletter",
        "email": f"person{i}@example.de",
        "ip": "192.0.2.2",
        "at": at.isoformat(),
    }


def file_lines(total: int) -> list[str]:
    """`total` lines: a sign-up each, bad lines at `BAD`, and the confirmation of the last
    sign-up written first (line 2), far above its sign-up, chunks apart."""
    lines = []
    for number in range(1, total + 1):
        if number in BAD:
            lines.append(json.dumps({**signup(number), "email": "not an address"}) if number % 2 else "{broken")
        elif number == 2:
            lines.append(json.dumps(confirm(total)))
        else:
            lines.append(json.dumps(signup(number)))
    return lines


def consent_events() -> int:
    with transaction() as session:
        return session.execute(select(func.count()).select_from(ConsentEvent)).scalar_one()


def test_each_chunk_is_committed_before_it_is_reported_and_bad_lines_keep_their_numbers(settings):
    total = 2 * CHUNK + 500
    lines = file_lines(total)
    reported: list = []
    for results in import_lines(KEY, lines, now=NOW):
        reported += results
        # What is reported is committed: another session sees every line reported stored.
        assert consent_events() == sum(r.outcome == "stored" for r in reported)
    assert sorted(r.line for r in reported) == list(range(1, total + 1)), "every line reported once"
    rejected = {r.line: r.reason for r in reported if r.outcome == "rejected"}
    assert set(rejected) == BAD
    assert rejected[CHUNK] == "not valid JSON" and rejected[CHUNK + 1].startswith("email:")
    # The confirmation at line 2 found its sign-up, two chunks further down, and came last.
    assert reported[-1].line == 2 and reported[-1].outcome == "stored"
    assert {r.outcome for r in reported if r.line not in BAD} == {"stored"}
    with transaction() as session:
        # The audit rows were written with each chunk, through the one writer: a whole chain.
        rows = session.execute(select(func.count()).select_from(AuditEntry)).scalar_one()
        assert rows == total - len(BAD)
        assert verify(session, KEY).ok


def test_importing_the_same_file_again_changes_nothing(settings):
    lines = file_lines(CHUNK + 300)
    first = [r for chunk in import_lines(KEY, lines, now=NOW) for r in chunk]
    before = consent_events()
    again = [r for chunk in import_lines(KEY, lines, now=NOW + timedelta(minutes=1)) for r in chunk]
    assert consent_events() == before
    assert {r.line: r.outcome for r in again} == {
        r.line: ("duplicate" if r.outcome == "stored" else r.outcome) for r in first
    }


def test_a_file_ends_with_its_wal_checkpointed_after_its_last_chunk(settings, monkeypatch):
    # The checkpoint runs once the last chunk has been reported: the job that follows an
    # intake does not share its first commits with copying the intake's pages.
    import flows.intake as intake_flow

    seen: list[int] = []
    monkeypatch.setattr(intake_flow, "checkpoint", lambda url=None: seen.append(len(reported)))
    reported: list = []
    for chunk in import_lines(KEY, file_lines(CHUNK + 10), now=NOW):
        assert seen == []
        reported += chunk
    assert seen == [CHUNK + 10]


def test_a_chunk_that_fails_rolls_back_alone_and_what_was_reported_stays(settings, monkeypatch):
    """A failure while storing the second chunk (a crash inside the process): the first
    chunk, reported, is stored; nothing of the second is; the file again stores the rest."""
    from intake import lines as intake_lines_module

    lines = file_lines(2 * CHUNK + 100)
    calls = {"n": 0}
    real = intake_lines_module.Applier.apply

    def failing(self, chunk, defer):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(self, chunk, defer)

    monkeypatch.setattr(intake_lines_module.Applier, "apply", failing)
    reported = []
    with pytest.raises(RuntimeError, match="disk full"):
        for results in import_lines(KEY, lines, now=NOW):
            reported += results
    stored_first = sum(r.outcome == "stored" for r in reported)
    # Lines 1, 999 and 1000 are bad; line 2 waits for its sign-up at the end of the file.
    assert max(r.line for r in reported) == CHUNK and stored_first == CHUNK - 4
    assert consent_events() == stored_first
    monkeypatch.setattr(intake_lines_module.Applier, "apply", real)
    again = [r for chunk in import_lines(KEY, lines, now=NOW) for r in chunk]
    outcomes = {r.line: r.outcome for r in again}
    assert all(outcomes[r.line] == "duplicate" for r in reported if r.outcome == "stored")
    assert sum(o == "stored" for o in outcomes.values()) == len(lines) - len(BAD) - stored_first


def test_a_commit_that_fails_is_raised_and_its_chunk_never_reported(settings, monkeypatch):
    """A chunk whose commit fails (a full disk at the commit): the import stops with that
    error, the chunk is not reported and not stored, and no chunk after it is applied."""
    from sqlmodel import Session

    lines = file_lines(3 * CHUNK)
    commits = {"n": 0}
    real = Session.commit

    def failing(self):
        commits["n"] += 1
        if commits["n"] == 2:
            raise RuntimeError("disk full at commit")
        return real(self)

    monkeypatch.setattr(Session, "commit", failing)
    reported = []
    with pytest.raises(RuntimeError, match="disk full at commit"):
        for results in import_lines(KEY, lines, now=NOW):
            reported += results
    assert commits["n"] == 2  # the third chunk was never applied
    assert max(r.line for r in reported) == CHUNK  # the first chunk only
    assert consent_events() == sum(r.outcome == "stored" for r in reported)


def test_psync_intake_killed_mid_file_loses_nothing_it_reported(settings, database_url, tmp_path):
    """A real process (`psync intake`) reading from a pipe: once it has reported line
    CHUNK*2 rejected (so the second chunk has committed) it waits for more of the file and is
    killed with SIGKILL. Both reported chunks are stored; running the whole file again
    reports them duplicate and stores the rest."""
    total = 3 * CHUNK
    lines = file_lines(total)
    pipe = tmp_path / "events.jsonl"
    os.mkfifo(pipe)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSYNC_")}
    env.update(PSYNC_DATABASE_URL=database_url, PSYNC_PSEUDONYM_KEY=TEST_KEY)
    process = subprocess.Popen(
        [sys.executable, "-m", "psync.cli", "intake", str(pipe)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sent = 2 * CHUNK + 100  # the third chunk is never complete: the process waits for it

    def feed():
        with open(pipe, "w") as out:
            out.write("".join(line + "\n" for line in lines[:sent]))
            out.flush()
            killed.wait(120)

    killed = threading.Event()
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        said = []
        assert process.stderr is not None
        for text in process.stderr:
            said.append(text.strip())
            if text.startswith(f"events.jsonl:{2 * CHUNK}:"):  # the second chunk's last line
                break
        else:
            raise AssertionError(f"psync intake ended early: {said}")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        killed.set()
        if process.poll() is None:
            process.kill()
        writer.join(timeout=10)
    reported = {int(s.split(":")[1]) for s in said}
    assert reported == {n for n in BAD if n <= 2 * CHUNK}
    # Two chunks committed: every good line of them stored, nothing of the third (line 2 is
    # the confirmation still waiting for its sign-up at the end of the file).
    assert consent_events() == 2 * CHUNK - len(reported) - 1
    full = tmp_path / "all.jsonl"
    full.write_text("".join(line + "\n" for line in lines))
    again = [
        r for chunk in import_lines(KEY, full.read_bytes().splitlines(), now=NOW + timedelta(minutes=5)) for r in chunk
    ]
    outcomes = {r.line: r.outcome for r in again}
    assert {outcomes[n] for n in range(3, 2 * CHUNK + 1) if n not in BAD} == {"duplicate"}
    assert {outcomes[n] for n in range(2 * CHUNK + 2, total + 1)} == {"stored"}
    assert outcomes[2] == "stored"
    assert consent_events() == total - len(BAD)


def test_a_document_is_encrypted_as_it_is_read_into_a_fernet_token():
    key = Fernet.generate_key()
    data = os.urandom(3 * 1024 * 1024 + 17)
    pieces = [data[i : i + 65536 + 1] for i in range(0, len(data), 65536 + 1)]
    token, size = fernet_encrypt_stream(key, pieces)
    assert size == len(data) and Fernet(key).decrypt(token) == data
    for small in (b"", b"x", b"12", b"123"):  # every base64 remainder
        assert Fernet(key).decrypt(fernet_encrypt_stream(key, [small])[0]) == small
    cipher = DocumentCipher(Fernet.generate_key())
    wrapped, sealed, size = cipher.seal_stream(iter(pieces))
    assert cipher.open(sealed, wrapped) == data and size == len(data)


def test_a_document_changed_after_its_check_is_refused_when_read(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(PDF_BYTES)
    upload = check_document(tmp_path, "scan.pdf", frozenset({PDF, JPEG}), 4096)
    assert upload == Upload(path.resolve(), PDF, len(PDF_BYTES))
    assert b"".join(upload.pieces()) == PDF_BYTES
    path.write_bytes(JPEG_BYTES)  # another type
    with pytest.raises(ValueError, match="changed"):
        b"".join(upload.pieces())
    path.write_bytes(PDF_BYTES + b"more")  # another size
    with pytest.raises(ValueError, match="changed"):
        b"".join(upload.pieces())
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.pdf")  # a link now
    (tmp_path / "elsewhere.pdf").write_bytes(PDF_BYTES)
    with pytest.raises(ValueError, match="changed"):
        b"".join(upload.pieces())
