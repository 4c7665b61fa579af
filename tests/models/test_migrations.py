"""Alembic migrations match the models; UTCDateTime stores instants, never naive times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect, select, text
from sqlalchemy.exc import StatementError
from sqlmodel import SQLModel

import models  # noqa: F401  (registers every table)
from models.db import get_engine
from models.migrate import upgrade
from models.types import UTCDateTime


@pytest.fixture
def migrated(empty_database):
    """An empty database of this pass (SQLite, or a PostgreSQL schema) migrated to head."""
    upgrade(empty_database)
    return empty_database


def test_upgrade_creates_every_table(migrated):
    names = set(inspect(get_engine(migrated)).get_table_names())
    assert set(SQLModel.metadata.tables) <= names
    assert "alembic_version" in names


def test_migrated_schema_matches_the_models(migrated):
    with get_engine(migrated).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == []


def test_the_comparison_would_see_a_difference(migrated):
    # Guards the test above against passing vacuously.
    engine = get_engine(migrated)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_consent_state"))
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    assert [d[0] for d in diff] == ["add_index"]


def test_upgrade_twice_is_a_no_op(migrated):
    engine = get_engine(migrated)

    def snapshot():
        with engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).all()
            found = inspect(connection)
            schema = {
                table: (
                    [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
                    sorted((i["name"], tuple(i["column_names"])) for i in found.get_indexes(table)),
                    sorted(str(u["column_names"]) for u in found.get_unique_constraints(table)),
                )
                for table in found.get_table_names()
            }
        return version, schema

    before = snapshot()
    upgrade(migrated)
    assert snapshot() == before
    assert len(before[0]) == 1


# UTCDateTime -----------------------------------------------------------------------------
# On PostgreSQL the column is timestamptz; its round trip is in tests/test_postgres.py.
sqlite_storage = pytest.mark.sqlite_only("UTCDateTime's naive-UTC storage is SQLite's")

METADATA = MetaData()
STAMPS = Table("stamps", METADATA, Column("id", Integer, primary_key=True), Column("at", UTCDateTime))


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/types.db")
    METADATA.create_all(engine)
    yield engine
    engine.dispose()


@sqlite_storage
@pytest.mark.parametrize(
    "aware",
    [
        datetime(2026, 3, 29, 3, 30, tzinfo=ZoneInfo("Europe/Berlin")),  # CEST, +02:00
        datetime(2026, 1, 15, 9, 0, 0, 123456, tzinfo=ZoneInfo("Europe/Berlin")),  # CET
        datetime(2026, 7, 1, 23, 59, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 7, 1, 12, 0, tzinfo=UTC),
    ],
)
def test_aware_datetime_round_trips_as_the_same_instant_in_utc(engine, aware):
    with engine.begin() as connection:
        connection.execute(STAMPS.insert(), {"id": 1, "at": aware})
    with engine.connect() as connection:
        back = connection.execute(select(STAMPS.c.at)).scalar_one()
        raw = connection.execute(text("SELECT at FROM stamps")).scalar_one()
    assert back == aware
    assert back.utcoffset() == timedelta(0)
    assert back.replace(tzinfo=None) == aware.astimezone(UTC).replace(tzinfo=None)
    assert raw.startswith(aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))


@sqlite_storage
def test_naive_datetime_is_refused_on_write(engine):
    with pytest.raises(StatementError, match="naive datetime"), engine.begin() as connection:
        connection.execute(STAMPS.insert(), {"id": 1, "at": datetime(2026, 5, 4, 12, 0)})
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM stamps")).scalar_one() == 0


@sqlite_storage
def test_none_stays_none(engine):
    with engine.begin() as connection:
        connection.execute(STAMPS.insert(), {"id": 1, "at": None})
    with engine.connect() as connection:
        assert connection.execute(select(STAMPS.c.at)).scalar_one() is None
