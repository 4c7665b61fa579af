"""Schema changes are Alembic migrations; this runs them (``psync db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from core.settings import get_settings
from models.consent_text import register_shipped
from models.db import transaction

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # The option goes through ConfigParser interpolation: a URL-encoded character (%2F in a
    # socket path, %40 in a password) must be written as %%.
    config.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at `url` (default: the configured one) to `revision`; at head,
    then register the consent texts shipped with psync that are not registered yet
    (``models.consent_text.register_shipped``: a fresh install takes sign-ups of those
    versions right away)."""
    command.upgrade(alembic_config(url), revision)
    if revision == "head":
        with transaction(url) as session:
            register_shipped(session)
