"""Schema migrations (Alembic), run when the store opens, so every start finds the schema at head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

HERE = Path(__file__).resolve().parent
FIRST_REVISION = "0001"


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration without an alembic.ini: the scripts live in this package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection: Connection) -> None:
    """Bring the database to the newest revision.

    A database made before migrations existed (its tables created directly) holds exactly the first
    revision's schema: it is stamped with that revision, then upgraded like any other.
    """
    tables = set(inspect(connection).get_table_names())
    if "turns" in tables and "alembic_version" not in tables:
        command.stamp(config(connection), FIRST_REVISION)
    command.upgrade(config(connection), "head")


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
