"""Intake of student-ID orders: refused fields, documents by content, encryption at rest."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlmodel import select

from flows.intake import intake_lines
from models.db import transaction
from models.documents import DocumentCipher
from models.isic import IsicDocument, IsicOrder, OrderStatus, open_document

from support import JPEG_BYTES, PDF_BYTES, isic_order

NOW = datetime(2026, 9, 1, 10, 0, tzinfo=UTC)
DOC_KEY = Fernet.generate_key()
IBAN = "DE89 3704 0044 0532 0130 00"


@pytest.fixture
def docs(docs):
    (docs / "foto-wirklich-ein-pdf.jpg").write_bytes(PDF_BYTES)
    return docs


def order(order_id="O-1", **kw) -> dict:
    documents = {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"}
    return isic_order(order_id, NOW.isoformat(), iban=IBAN, phone_password="Sonnenblume7", documents=documents) | kw


def run(settings, base_dir, *events) -> list:
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    with transaction() as session:
        return intake_lines(session, settings.hmac_key(), lines, now=NOW, base_dir=base_dir, document_key=DOC_KEY)


def counts() -> dict[str, int]:
    with transaction() as session:
        return {
            t: session.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("isic_order", "isic_document", "data_subject", "intake_receipt")
        }


def test_an_order_is_stored_with_its_documents_encrypted(settings, docs):
    assert [r.outcome for r in run(settings, docs, order())] == ["stored"]
    with transaction() as session:
        stored = session.exec(select(IsicOrder)).one()
        documents = {d.kind: d for d in session.exec(select(IsicDocument))}
        assert stored.iban == "DE89370400440532013000" and stored.status == OrderStatus.received
        assert b"Sonnenblume7" not in stored.phone_password_enc
        assert {k: d.media_type for k, d in documents.items()} == {
            "student_proof": "application/pdf",
            "id_copy": "image/png",
            "photo": "image/jpeg",
        }
        for document, plain in ((documents["student_proof"], PDF_BYTES), (documents["photo"], JPEG_BYTES)):
            assert plain not in document.ciphertext and document.ciphertext[:5] != plain[:5]
            assert open_document(session, document, DocumentCipher(DOC_KEY)) == plain


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"online_banking_login": "lena123"}, "online-banking credentials are never accepted"),
        ({"online_banking_pin": "12345"}, "online-banking credentials are never accepted"),
        ({"iban": "DE89 3704 0044 0532 0130 01"}, "iban: Value error, not a valid IBAN"),
        ({"birth_date": "2024-01-01"}, "not a plausible birth date"),
        ({"birth_date": "1900-01-01"}, "not a plausible birth date"),
        ({"postal_code": "1011"}, "postal_code: String should match pattern"),
        (
            {"documents": {"student_proof": "fehlt.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"}},
            "documents.student_proof: file not found",
        ),
        (
            {
                "documents": {
                    "student_proof": "nachweis.pdf",
                    "id_copy": "ausweis.png",
                    "photo": "foto-wirklich-ein-pdf.jpg",
                }
            },
            "documents.photo: content is not JPEG/PNG",
        ),
        (
            {"documents": {"student_proof": "../etc/passwd", "id_copy": "ausweis.png", "photo": "foto.jpg"}},
            "documents.student_proof: must be a path relative",
        ),
        (
            {"documents": {"student_proof": "/etc/hostname", "id_copy": "ausweis.png", "photo": "foto.jpg"}},
            "documents.student_proof: must be a path relative",
        ),
        ({"email": "lena@"}, "email: Value error, not a valid e-mail address"),
        ({"card_pin": "1234"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_orders_are_rejected_with_a_reason_and_nothing_is_stored(settings, docs, change, reason):
    [result] = run(settings, docs, order(**change))
    assert result.outcome == "rejected" and reason.replace("Value error, ", "") in result.reason
    assert counts() == {"isic_order": 0, "isic_document": 0, "data_subject": 0, "intake_receipt": 0}


def test_a_document_above_the_size_limit_is_refused(settings, docs):
    (docs / "riesig.pdf").write_bytes(PDF_BYTES + b"0" * 2048)
    with transaction() as session:
        [result] = intake_lines(
            session,
            settings.hmac_key(),
            [
                json.dumps(
                    order(documents={"student_proof": "riesig.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"})
                )
            ],
            now=NOW,
            base_dir=docs,
            document_key=DOC_KEY,
            max_document_bytes=1024,
        )
    assert result.outcome == "rejected" and "larger than 1024 bytes" in result.reason


def test_reasons_never_quote_values_or_file_names(settings, docs):
    results = run(
        settings,
        docs,
        order(online_banking_password="geheim99", iban="DE00lena"),
        order("O-2", documents={"student_proof": "lena_studentin.pdf", "id_copy": "x", "photo": "y"}),
    )
    text_ = " ".join(r.reason for r in results)
    assert "geheim99" not in text_ and "lena" not in text_.lower()


def test_the_same_line_twice_is_a_duplicate_and_cancel_is_recorded_once(settings, docs):
    assert [r.outcome for r in run(settings, docs, order(), order())] == ["stored", "duplicate"]
    cancel = {"type": "isic.cancel", "order_id": "O-1", "at": NOW.isoformat()}
    assert [r.outcome for r in run(settings, docs, cancel, cancel)] == ["stored", "duplicate"]
    assert [r.outcome for r in run(settings, docs, {**cancel, "at": (NOW - timedelta(minutes=1)).isoformat()})] == [
        "unchanged"
    ]
    with transaction() as session:
        assert session.exec(select(IsicOrder)).one().status == OrderStatus.cancelled


def test_a_cancellation_sent_before_its_order_is_kept_and_cancels_it_when_it_arrives(settings, docs):
    cancel = {"type": "isic.cancel", "order_id": "O-1", "at": NOW.isoformat()}
    assert [r.outcome for r in run(settings, docs, cancel)] == ["pending"]
    assert [r.outcome for r in run(settings, docs, {**order(), "at": (NOW - timedelta(hours=1)).isoformat()})] == [
        "stored"
    ]
    with transaction() as session:
        # Never received, so never forwarded to the issuer: cancelled in the same transaction.
        assert session.exec(select(IsicOrder)).one().status == OrderStatus.cancelled
        assert session.execute(text("SELECT count(*) FROM intake_pending")).scalar_one() == 0


def test_an_order_imported_again_after_its_uploads_were_removed_is_a_duplicate(settings, docs):
    # The website's upload folder is tidied after the import; importing the file again
    # (after a crash, say) must report the stored order as such and change nothing.
    assert [r.outcome for r in run(settings, docs, order())] == ["stored"]
    before = counts()
    for name in ("nachweis.pdf", "ausweis.png", "foto.jpg"):
        (docs / name).unlink()
    assert [(r.outcome, r.reason) for r in run(settings, docs, order())] == [("duplicate", "")]
    assert counts() == before
    # A line never stored is still rejected for the missing file.
    [result] = run(settings, docs, order("O-2"))
    assert result.outcome == "rejected" and result.reason.startswith("documents.student_proof: ")


def test_no_document_bytes_or_personal_data_in_logs(settings, docs, caplog):
    caplog.set_level(logging.DEBUG)
    run(settings, docs, order(), order("O-2", iban="DE00"))
    assert "Lena" not in caplog.text and "Sonnenblume7" not in caplog.text and "%PDF" not in caplog.text
