"""Alembic's entry point: migrations run on the connection the store hands over, never one of their own."""

from __future__ import annotations

from alembic import context

from bot.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Parley's migrations run through bot.migrations.upgrade(), on the store's connection")
# Batch mode lets SQLite, which cannot alter most of a table in place, rebuild tables a migration changes.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
