"""Personal columns declared once (issue 16): every column of every table carries a class
(personal / pseudonymous / not personal); erasure clears every personal column and the
read-back checks every one, the ISIC card number included."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlmodel import SQLModel

import models  # noqa: F401 - registers every table
from models.db import transaction
from models.erasure import erase_controller_copy, personal_data_left, personal_tables, subject_rows
from models.isic import IsicOrder
from models.subjects import DataSubject
from models.types import PII_CLASSES, classify, pii_class

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def unclassified(metadata: MetaData) -> list[str]:
    return [f"{t.name}.{c.name}" for t in metadata.sorted_tables for c in t.columns if pii_class(c) not in PII_CLASSES]


def test_every_column_of_every_table_is_classified():
    # A column added to a model without a class fails here: declare it with
    # models.types.classify (personal, pseudonymous or not_personal) below the model.
    assert unclassified(SQLModel.metadata) == []


def test_the_check_would_see_an_unclassified_column():
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("nickname", String))
    table.c.id.info["pii"] = "not_personal"
    assert unclassified(table.metadata) == ["t.nickname"]


def test_every_table_with_personal_columns_leads_to_a_subject():
    # Otherwise erasure could not find the subject's rows in it.
    tables = {table.name: [c.name for c in columns] for table, columns in personal_tables()}
    assert {"data_subject", "booking", "consent", "consent_event", "isic_order", "isic_document"} <= set(tables)
    assert "card_number" in tables["isic_order"] and "email" in tables["data_subject"]
    for table, _ in personal_tables():
        assert subject_rows(table, DataSubject().id) is not None, table.name


def test_a_misspelt_or_doubled_classification_is_refused():
    with pytest.raises(ValueError, match="has no column emial"):
        classify(DataSubject, personal=["emial"])
    with pytest.raises(ValueError, match="classified twice"):
        classify(DataSubject, personal=["email"], not_personal=["email"])


def _subject_with_an_issued_card(session) -> DataSubject:
    subject = DataSubject(pseudonym="p" * 32, email="lena@example.de", first_name="Lena", last_name="Studentin")
    session.add(subject)
    session.flush()
    session.add(
        IsicOrder(
            order_ref="ISIC-1",
            subject_id=subject.id,
            status="issued",
            seq=1,
            first_name="Lena",
            last_name="Studentin",
            iban="DE89370400440532013000",
            card_number="S 420 123 456 789 X",
            card_status="ACTIVE",
        )
    )
    return subject


def test_erasure_clears_the_isic_card_number_and_the_read_back_looks_at_it(settings):
    with transaction() as session:
        subject_id = _subject_with_an_issued_card(session).id
    with transaction() as session:
        erase_controller_copy(session, subject_id, NOW)
    with transaction() as session:
        order = session.get(IsicOrder, session.exec(IsicOrder.__table__.select()).one().id)
        assert order.card_number is None and order.iban is None
        assert order.card_status == "ACTIVE" and order.order_ref == "ISIC-1"  # not personal: stays
        assert personal_data_left(session, subject_id) == []
        order.card_number = "S 420 123 456 789 X"  # as before issue 16: the number survived
        session.flush()
        assert personal_data_left(session, subject_id) == ["isic_order"]
        session.rollback()
