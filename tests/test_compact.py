"""`psync db compact` (issue 16): after an erasure, the erased values are gone from the
database's files, not only from what SQL shows. On PostgreSQL the old row versions stay in
the table and index files until the tables are rewritten."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from models.bookings import Booking
from models.consent import ConsentRecord
from models.db import get_engine, transaction
from models.documents import DocumentCipher
from models.erasure import erase_controller_copy
from models.isic import IsicDocument, IsicOrder
from models.subjects import DataSubject
from psync.cli import app

from support import PDF_BYTES

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
# Values nobody else in the suite uses, so a hit in the files is this test's.
EMAIL, LAST, PHONE = "kompakt.erika@example.de", "Kompaktowski", "+4917099887766"
INSURANCE, IBAN = "K987654321", "DE44500105175407324931"


def seed() -> tuple:
    cipher = DocumentCipher(Fernet.generate_key())
    with transaction() as session:
        subject = DataSubject(
            pseudonym="c" * 32, email=EMAIL, first_name="Erika", last_name=LAST, insurance_number=INSURANCE
        )
        session.add(subject)
        session.flush()
        session.add(
            Booking(
                booking_ref="B-kompakt",
                subject_id=subject.id,
                channel="branch",
                start_at=NOW,
                duration_min=30,
                seq=1,
                last_name=LAST,
                phone=PHONE,
                insurance_number=INSURANCE,
            )
        )
        session.add(
            ConsentRecord(
                subject_id=subject.id,
                list_name="newsletter",
                state="confirmed",
                signup_at=NOW,
                signup_ip="198.51.100.99",
            )
        )
        order = IsicOrder(
            order_ref="ISIC-kompakt",
            subject_id=subject.id,
            seq=1,
            status="issued",
            last_name=LAST,
            iban=IBAN,
            card_number="S 420 998 877 665 K",
        )
        key, ciphertext = cipher.seal(PDF_BYTES)
        session.add(
            IsicDocument(
                order=order,
                kind="student_proof",
                media_type="application/pdf",
                size=len(PDF_BYTES),
                ciphertext=ciphertext,
                key=key,
            )
        )
        session.flush()
        return subject.id, key.wrapped


def database_files(url: str) -> bytes:
    """Every relation file of the test database (tables, TOAST, indexes, catalogs), as on disk."""
    with get_engine(url).connect() as connection:
        connection.exec_driver_sql("CHECKPOINT")  # the changed pages out of shared buffers
        data = connection.exec_driver_sql("SHOW data_directory").scalar()
        oid = connection.exec_driver_sql("SELECT oid FROM pg_database WHERE datname = current_database()").scalar()
    folder = Path(data, "base", str(oid))
    try:
        return b"".join(f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file())
    except OSError:
        pytest.skip("the server's data directory is not readable from here")


@pytest.mark.postgres_only
def test_after_compaction_no_erased_value_is_in_the_table_files(settings):
    url = settings.database_url
    subject_id, wrapped = seed()
    with transaction() as session:
        erase_controller_copy(session, subject_id, NOW)
    values = [EMAIL.encode(), LAST.encode(), PHONE.encode(), INSURANCE.encode(), IBAN.encode(), wrapped]
    before = database_files(url)
    # Erased for SQL, not on disk: the old row versions are still in the files.
    assert [v for v in values if v in before], "nothing to compact: the test would prove nothing"

    result = CliRunner().invoke(app, ["db", "compact"])
    assert result.exit_code == 0, result.output
    assert {"data_subject", "booking", "isic_order", "isic_document", "document_key"} <= {
        line.split(":")[0] for line in result.stdout.splitlines()
    }
    after = database_files(url)
    assert [v for v in values if v in after] == []


def test_on_sqlite_compaction_vacuums_the_file_and_empties_the_wal(settings):
    url = settings.database_url
    if not url.startswith("sqlite"):
        pytest.skip("SQLite's own compaction")
    subject_id, wrapped = seed()
    with transaction() as session:
        erase_controller_copy(session, subject_id, NOW)
    result = CliRunner().invoke(app, ["db", "compact"])
    assert result.exit_code == 0 and result.stdout.startswith("*: ")
    path = Path(url.split("///", 1)[1])
    blob = path.read_bytes() + Path(f"{path}-wal").read_bytes()
    assert Path(f"{path}-wal").stat().st_size == 0
    assert [v for v in (EMAIL.encode(), LAST.encode(), IBAN.encode(), wrapped) if v in blob] == []
