"""The schema as operators see it: `parley db current` / `parley db upgrade`, and instances that start at
the same instant on an empty database, each a real `parley` process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bot import migrations
from bot.schema import metadata
from tests.support.llm_server import LLMServer

ROOT = Path(__file__).resolve().parents[1]
MODEL_LINE = "This channel uses openrouter/xiaomi/mimo-v2-flash (context 262,144 tokens)."


async def start_parley(
    llm: LLMServer, cwd: Path, database_url: str, *args: str
) -> asyncio.subprocess.Process:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "HOME": str(cwd),
        "OPENROUTER_API_KEY": "sk-test",
        "OPENROUTER_BASE_URL": llm.openai_base_url,
        "DATABASE_URL": database_url,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, stdin: str = "") -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def parley(llm: LLMServer, cwd: Path, database_url: str, *args: str) -> tuple[int, str, str]:
    return await finish(await start_parley(llm, cwd, database_url, *args))


async def schema_differences(database_url: str) -> tuple[str | None, list[object]]:
    engine = create_async_engine(database_url)

    def read(connection: Connection) -> tuple[str | None, list[object]]:
        return migrations.current(connection), compare_metadata(
            MigrationContext.configure(connection), metadata
        )

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(read)
    finally:
        await engine.dispose()


@pytest.mark.both_databases
async def test_db_current_and_upgrade_tell_the_revision_and_migrate(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    head = migrations.head()
    code, out, err = await parley(llm, tmp_path, database_url, "db", "current")
    assert code == 1, err
    assert out.strip().endswith(
        f"is at no Parley schema yet; this version needs revision {head}: "
        "run `parley db upgrade` (or start Parley, which migrates)."
    )
    code, out, err = await parley(llm, tmp_path, database_url, "db", "upgrade")
    assert code == 0, err
    assert out.strip().endswith(f"went from no Parley schema yet to revision {head}.")
    assert await schema_differences(database_url) == (head, [])
    code, out, err = await parley(llm, tmp_path, database_url, "db", "upgrade")
    assert code == 0 and out.strip().endswith(f"is already at revision {head}."), err
    code, out, err = await parley(llm, tmp_path, database_url, "db", "current")
    assert code == 0 and out.strip().endswith(f"is at revision {head}, the newest this version knows."), err


async def test_db_commands_name_a_database_they_cannot_reach(llm: LLMServer, tmp_path: Path) -> None:
    unreachable = "postgresql+asyncpg://parley:secret-pw@127.0.0.1:9/parley"
    code, out, err = await parley(llm, tmp_path, unreachable, "db", "current")
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: could not open the database postgresql+asyncpg://parley:***@127.0.0.1:9/")
    assert "secret-pw" not in err


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_four_instances_started_at_the_same_instant_on_an_empty_database_all_come_up(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    """The test holds the migration lock while four `parley chat` processes start, until all four wait
    for it: they reach the schema at the same instant, and each finds it as the one before left it.
    Then each is asked something in the same channel."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    holder = await asyncpg.connect(dsn)
    await holder.execute("SELECT pg_advisory_lock($1)", migrations.LOCK_KEY)
    folders = [tmp_path / f"instance{n}" for n in range(4)]
    for folder in folders:
        folder.mkdir()
    processes = [await start_parley(llm, folder, database_url, "chat") for folder in folders]
    try:
        for _ in range(3000):
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            if waiting == 4 or any(p.returncode is not None for p in processes):
                break
            await asyncio.sleep(0.02)
        exited = [await finish(p) for p in processes if p.returncode is not None]
        assert waiting == 4, f"the four instances did not all wait for the migration lock: {exited}"
        await holder.execute("SELECT pg_advisory_unlock($1)", migrations.LOCK_KEY)
        results = await asyncio.gather(*(finish(p, "/model\n") for p in processes))
    finally:
        await holder.close()
        for process in processes:
            if process.returncode is None:
                process.kill()
    for code, out, err in results:
        # Each answers its own question, once: none takes another's, which is alive, for a crash's.
        assert (code, out.splitlines()) == (0, [MODEL_LINE]), err
    assert await schema_differences(database_url) == (migrations.head(), [])
