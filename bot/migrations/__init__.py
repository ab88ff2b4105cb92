"""Schema migrations (Alembic), run when the store opens, so every start finds the schema at head."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

HERE = Path(__file__).resolve().parent
FIRST_REVISION = "0001"
# The advisory lock every instance takes before it looks at the schema (any 64-bit number of our own).
LOCK_KEY = 0x7061726C6579  # "parley"
log = logging.getLogger(__name__)
# Alembic narrates every step at INFO; one line of ours says what changed.
logging.getLogger("alembic").setLevel(logging.WARNING)


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

    Several instances may start at the same instant: each waits for the lock, then finds the schema as
    the one before it left it. The lock is held until the caller's transaction ends.
    """
    lock(connection)
    tables = set(inspect(connection).get_table_names())
    if "turns" in tables and "alembic_version" not in tables:
        command.stamp(config(connection), FIRST_REVISION)
    before = current(connection)
    command.upgrade(config(connection), "head")
    after = current(connection)
    if after != before:
        log.info("database schema %s revision %s", "created at" if before is None else "upgraded to", after)


def lock(connection: Connection) -> None:
    """Take the migration lock as the first statement of the connection's transaction: PostgreSQL's
    advisory lock; on SQLite the database's write lock, which one writer holds at a time (the others
    wait, up to the busy timeout)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    elif connection.dialect.name == "sqlite" and not _began(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _began(connection: Connection) -> bool:
    """Whether SQLite is in a transaction already: the store's writer begins each with BEGIN IMMEDIATE."""
    return bool(getattr(connection.connection.dbapi_connection, "in_transaction", False))


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head() -> str:
    head = ScriptDirectory.from_config(config()).get_current_head()
    assert head is not None
    return head
