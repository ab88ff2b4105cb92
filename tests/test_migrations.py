"""Schema migrations: every revision runs, the result is what the code expects, old databases are adopted."""

from __future__ import annotations

import shutil
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, text

from bot import migrations
from bot.schema import metadata
from bot.store import Store

# Made by Parley before it had migrations (tables created directly): two turns, settings with web search
# modes, a Slack event claim, a followed Slack thread and a meta value.
PRE_MIGRATIONS = Path(__file__).resolve().parent / "fixtures" / "pre-migrations.db"


def differences(connection: Connection) -> list[object]:
    return compare_metadata(MigrationContext.configure(connection), metadata)


def test_every_revision_up_and_down_and_head_matches_the_code(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/fresh.db")
    with engine.begin() as connection:
        migrations.upgrade(connection)
        assert migrations.current(connection) == "0005"
        assert differences(connection) == []
    with engine.begin() as connection:
        command.downgrade(migrations.config(connection), "base")
        assert migrations.current(connection) is None
    with engine.begin() as connection:
        migrations.upgrade(connection)
        assert differences(connection) == []


async def test_a_database_from_before_migrations_is_adopted_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(PRE_MIGRATIONS, path)
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    turns, _ = await store.recall("discord:100", 10_000)
    assert [(t.role, t.content) for t in turns] == [
        ("user", "Remember 42."),
        ("assistant", "I will remember 42."),
    ]
    assert (await store.settings(["discord:100"]))[0]["model"] == "openai/gpt-4o-mini"
    # Web search's mode moved into the skill modes, thread settings included.
    assert await store.skill_modes(["discord:100", "slack:C1:1.2"]) == [
        {"web_search": "auto"},
        {"web_search": "on"},
    ]
    assert await store.get_meta("discord:commands-hash") == "abc"
    assert await store.get_meta("followed:slack:C1:1.2") == "1"
    assert await store.get_meta("slack:thread:C1:1.2") is None
    await store.close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        assert migrations.current(connection) == "0005"
        assert differences(connection) == []
        tables = {
            row[0] for row in connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
        }
    assert "event_claims" not in tables and {"inbox", "inbox_files", "skill_modes"} <= tables
