"""Crypto-shredding of uploaded documents (issue 16): a data key per document, wrapped by
the master key; deleting the document destroys its key, so a copy of the ciphertext left
anywhere is unreadable even with the master key; the master key rotates without rewriting
documents; documents stored before data keys stay readable."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlmodel import select
from typer.testing import CliRunner

from core.settings import get_settings
from flows.intake import intake_lines
from models.db import scrub_journal, transaction
from models.documents import DocumentCipher, DocumentKey
from models.isic import IsicDocument, IsicOrder, delete_documents, open_document
from psync.cli import app

from support import JPEG_BYTES, PDF_BYTES

NOW = datetime(2026, 9, 1, 10, 0, tzinfo=UTC)
MASTER = Fernet.generate_key()


def take_in(settings, docs, order_id: str = "O-1", key: bytes = MASTER) -> None:
    line = json.dumps(
        {
            "type": "isic.order",
            "order_id": order_id,
            "first_name": "Lena",
            "last_name": "Studentin",
            "birth_date": "2004-02-29",
            "email": f"{order_id.lower()}@example.de",
            "postal_code": "10115",
            "iban": "DE89370400440532013000",
            "institution": "TU Berlin",
            "phone_password": "Sonnenblume7",
            "at": NOW.isoformat(),
            "documents": {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"},
        }
    )
    with transaction() as session:
        [result] = intake_lines(session, settings.hmac_key(), [line], now=NOW, base_dir=docs, document_key=key)
    assert result.outcome == "stored", result.reason


def documents(session, order_ref: str = "O-1") -> dict[str, IsicDocument]:
    order = session.exec(select(IsicOrder).where(IsicOrder.order_ref == order_ref)).one()
    return {d.kind: d for d in session.exec(select(IsicDocument).where(IsicDocument.order_id == order.id))}


def test_each_document_has_its_own_data_key_wrapped_by_the_master_key(settings, docs):
    take_in(settings, docs)
    cipher = DocumentCipher(MASTER)
    with transaction() as session:
        found = documents(session)
        keys = {d.key_id for d in found.values()}
        assert len(keys) == 3 and None not in keys
        photo = found["photo"]
        assert open_document(session, photo, cipher) == JPEG_BYTES
        with pytest.raises(ValueError):  # the master key alone does not open the document
            cipher.decrypt(photo.ciphertext)


def test_a_deleted_documents_saved_ciphertext_is_unreadable_even_with_the_master_key(settings, docs):
    take_in(settings, docs)
    take_in(settings, docs, "O-2")  # another person's documents stay readable
    cipher = DocumentCipher(MASTER)
    with transaction() as session:
        proof = documents(session)["student_proof"]
        saved_ciphertext, saved_key_id = proof.ciphertext, proof.key_id  # a copy, as a backup of the blob would keep
        wrapped = session.get(DocumentKey, saved_key_id).wrapped
        assert cipher.open(saved_ciphertext, session.get(DocumentKey, saved_key_id)) == PDF_BYTES
    with transaction() as session:
        order = session.exec(select(IsicOrder).where(IsicOrder.order_ref == "O-1")).one()
        assert delete_documents(session, order)
    scrub_journal()

    with transaction() as session:
        assert session.get(DocumentKey, saved_key_id) is None
        remaining = session.exec(select(DocumentKey)).all()
        assert len(remaining) == 3  # O-2's
        # Neither the master key nor any data key still stored opens the copy.
        with pytest.raises(ValueError):
            cipher.decrypt(saved_ciphertext)
        for key in remaining:
            with pytest.raises(ValueError):
                cipher.open(saved_ciphertext, key)
        assert open_document(session, documents(session, "O-2")["student_proof"], cipher) == PDF_BYTES
    # Nor is the wrapped key anywhere in the database's files (secure_delete, WAL truncated).
    url = get_settings().database_url
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        blob = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())
        assert wrapped not in blob and saved_ciphertext[:64] not in blob


def test_documents_stored_before_data_keys_stay_readable_and_rotation_gives_them_one(settings, docs):
    old = DocumentCipher(MASTER)
    take_in(settings, docs)
    with transaction() as session:  # as revision 0005 stored it: the master key, no data key
        legacy = documents(session)["photo"]
        orphan = session.get(DocumentKey, legacy.key_id)
        legacy.ciphertext, legacy.key_id = old.encrypt(JPEG_BYTES), None
        session.flush()
        session.delete(orphan)
        legacy_id = legacy.id
    with transaction() as session:
        assert open_document(session, session.get(IsicDocument, legacy_id), old) == JPEG_BYTES


def test_the_master_key_rotates_without_rewriting_documents(settings, docs, monkeypatch):
    take_in(settings, docs)
    with transaction() as session:  # one document as stored before data keys
        legacy = documents(session)["photo"]
        orphan = session.get(DocumentKey, legacy.key_id)
        legacy.ciphertext, legacy.key_id = DocumentCipher(MASTER).encrypt(JPEG_BYTES), None
        session.flush()
        session.delete(orphan)
    with transaction() as session:
        before = {d.kind: (d.ciphertext, d.key_id) for d in documents(session).values()}
        wrapped_before = {k.id: k.wrapped for k in session.exec(select(DocumentKey))}
    new = Fernet.generate_key()
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", f"{new.decode()},{MASTER.decode()}")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["documents", "rotate-key"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "keys_rewrapped=2 documents_given_a_key=1 phone_passwords=1"

    only_new = DocumentCipher(new)
    with transaction() as session:
        after = documents(session)
        for kind in ("student_proof", "id_copy"):  # not rewritten: same bytes, same key row
            assert (after[kind].ciphertext, after[kind].key_id) == before[kind]
            assert session.get(DocumentKey, after[kind].key_id).wrapped != wrapped_before[after[kind].key_id]
        assert after["photo"].key_id is not None  # the legacy one got its own key (rewritten once)
        assert open_document(session, after["student_proof"], only_new) == PDF_BYTES
        assert open_document(session, after["photo"], only_new) == JPEG_BYTES
        order = session.exec(select(IsicOrder)).one()
        assert only_new.decrypt(order.phone_password_enc) == b"Sonnenblume7"
        with pytest.raises(ValueError):  # the old key alone opens nothing any more
            open_document(session, after["student_proof"], DocumentCipher(MASTER))


def test_rotation_with_a_key_that_opens_nothing_changes_nothing(settings, docs, monkeypatch):
    take_in(settings, docs)
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", Fernet.generate_key().decode())
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["documents", "rotate-key"])
    assert result.exit_code == 1
    assert "rotate-key failed, nothing changed" in result.stderr
    with transaction() as session:
        assert open_document(session, documents(session)["photo"], DocumentCipher(MASTER)) == JPEG_BYTES
