"""Schema migrations, on SQLite and PostgreSQL: every revision runs, the result is what the code expects,
old databases are adopted."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from bot import migrations
from bot.config import SetupError
from bot.schema import metadata
from bot.store import Store, settings_of, skill_modes_of

# Made by Parley before it had migrations (tables created directly): two turns, settings with web search
# modes, a Slack event claim, a followed Slack thread and a meta value.
PRE_MIGRATIONS = Path(__file__).resolve().parent / "fixtures" / "pre-migrations.db"


def differences(connection: Connection) -> list[object]:
    return compare_metadata(MigrationContext.configure(connection), metadata)


@pytest.mark.both_databases
async def test_every_revision_up_and_down_and_head_matches_the_code(database_url: str) -> None:
    engine = create_async_engine(database_url)

    def up(connection: Connection) -> None:
        migrations.upgrade(connection)
        assert migrations.current(connection) == "0012"
        assert migrations.current(connection) == migrations.head()
        assert differences(connection) == []

    def down(connection: Connection) -> None:
        command.downgrade(migrations.config(connection), "base")
        assert migrations.current(connection) is None
        assert inspect(connection).get_table_names() == ["alembic_version"]

    try:
        for step in (up, down, up):
            async with engine.begin() as connection:
                await connection.run_sync(step)
    finally:
        await engine.dispose()


async def test_a_database_from_before_migrations_is_adopted_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(PRE_MIGRATIONS, path)
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    turns, _ = await store.recall("discord:100", 10_000)
    assert [(t.role, t.content) for t in turns] == [
        ("user", "Remember 42."),
        ("assistant", "I will remember 42."),
    ]
    (settings,) = await store.read(partial(settings_of, conversations=["discord:100"]))
    assert settings["model"] == "openai/gpt-4o-mini"
    # Web search's mode moved into the skill modes, thread settings included.
    modes = partial(skill_modes_of, conversations=["discord:100", "slack:C1:1.2"])
    assert await store.read(modes) == [
        {"web_search": "auto"},
        {"web_search": "on"},
    ]
    assert await store.get_meta("discord:commands-hash") == "abc"
    assert await store.get_meta("followed:slack:C1:1.2") == "1"
    assert await store.get_meta("slack:thread:C1:1.2") is None
    await store.close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        assert migrations.current(connection) == "0012"
        assert migrations.current(connection) == migrations.head()
        assert differences(connection) == []
        tables = {
            row[0] for row in connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
        }
    assert "event_claims" not in tables and {"inbox", "inbox_files", "skill_modes"} <= tables


@pytest.mark.both_databases
async def test_a_schema_from_a_newer_version_is_refused_in_one_sentence(database_url: str) -> None:
    store = await Store.open(database_url)
    await store.write(lambda conn: conn.execute(text("UPDATE alembic_version SET version_num = '9999'")))
    await store.close()
    with pytest.raises(SetupError) as refused:
        await Store.open(database_url)
    message = str(refused.value)
    assert "is at a revision this version of Parley does not know" in message
    assert "'9999'" in message and "\n" not in message
