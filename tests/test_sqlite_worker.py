"""SQLite's group commit: the transactions waiting for the writer run in one BEGIN … COMMIT, each in a
savepoint of its own. One that raises is rolled back alone and only its caller gets the error; a COMMIT
that fails fails every caller of its group; nobody is answered before the COMMIT."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.exc import IntegrityError

from bot.schema import meta
from bot.store import Store


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "parley.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{path}")
    yield opened
    await opened.close()


class Held:
    """A transaction that holds the writer until released, so that the ones asked for meanwhile queue
    up behind it and are taken together."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: Connection) -> None:
        self.running.set()
        self.release.wait(timeout=30)

    async def started(self) -> None:
        await asyncio.to_thread(self.running.wait, 30)


def add(name: str, then: Callable[[Connection], Any] | None = None) -> Callable[[Connection], str]:
    def work(conn: Connection) -> str:
        conn.execute(insert(meta).values(name=name, value="1", updated_at=0.0))
        if then is not None:
            then(conn)
        return name

    return work


def stored(path: Path) -> list[str]:
    """What another connection sees committed."""
    with sqlite3.connect(path) as outside:
        return sorted(row[0] for row in outside.execute("SELECT name FROM meta WHERE name LIKE 'g-%'"))


async def queued_behind(store: Store, *works: Callable[[Connection], Any]) -> list[asyncio.Task[Any]]:
    """Start `works` while the writer is held, so that they run as one group once it is released."""
    held = Held()
    holding = asyncio.create_task(store.write(held))
    await held.started()
    tasks = [asyncio.create_task(store.write(work)) for work in works]
    await asyncio.sleep(0)  # each task runs up to its wait for the writer, in the order made
    held.release.set()
    await holding
    return tasks


async def test_one_transaction_of_a_group_raising_is_rolled_back_alone(store: Store, path: Path) -> None:
    def refuse(conn: Connection) -> None:
        raise ValueError("this one fails")

    first, failing, last = await queued_behind(
        store, add("g-first"), add("g-failing", then=refuse), add("g-last")
    )
    assert await first == "g-first"
    with pytest.raises(ValueError, match="this one fails"):
        await failing
    assert await last == "g-last"
    assert stored(path) == ["g-first", "g-last"]


async def test_a_statement_the_database_refuses_in_a_group_leaves_the_others_committed(
    store: Store, path: Path
) -> None:
    def refused(conn: Connection) -> None:
        conn.execute(insert(meta).values(name="g-first", value="again", updated_at=0.0))  # its key is taken

    first, failing, last = await queued_behind(
        store, add("g-first"), add("g-second", then=refused), add("g-last")
    )
    assert await first == "g-first" and await last == "g-last"
    with pytest.raises(IntegrityError):
        await failing
    assert stored(path) == ["g-first", "g-last"]
    assert (
        await store.read(
            lambda conn: conn.execute(select(meta.c.value).where(meta.c.name == "g-first")).scalar()
        )
        == "1"
    )


async def test_nobody_in_a_group_is_answered_before_its_commit(store: Store, path: Path) -> None:
    later = Held()

    def see(conn: Connection) -> list[str]:
        return sorted(conn.execute(select(meta.c.name).where(meta.c.name.like("g-%"))).scalars())

    seen: list[list[str]] = []
    first, second = await queued_behind(
        store, add("g-first"), add("g-second", then=lambda conn: (seen.append(see(conn)), later(conn)))
    )
    await later.started()  # the second runs: the first has run too, in the same transaction
    assert seen == [["g-first", "g-second"]]
    assert stored(path) == []  # nothing is committed yet
    assert not first.done()  # so its caller has not been answered
    later.release.set()
    assert await first == "g-first" and await second == "g-second"
    assert stored(path) == ["g-first", "g-second"]


async def test_a_commit_that_fails_fails_every_caller_of_its_group(store: Store, path: Path) -> None:
    """A deferred foreign key is checked at COMMIT: one function that breaks it makes the COMMIT fail,
    and with it the whole group, since nothing of it was kept."""

    def tables(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        conn.execute(
            text("CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
        )

    await store.write(tables)

    def orphan(conn: Connection) -> None:
        conn.execute(text("INSERT INTO child (parent) VALUES (42)"))  # no such parent: refused at COMMIT

    tasks = await queued_behind(store, add("g-first"), add("g-orphan", then=orphan), add("g-last"))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, IntegrityError) for result in results), results
    assert stored(path) == []
    # The writer goes on: the next transaction commits.
    assert await store.write(add("g-next")) == "g-next"
    assert stored(path) == ["g-next"]


async def test_a_caller_cancelled_before_its_turn_drops_its_transaction(store: Store, path: Path) -> None:
    held = Held()
    holding = asyncio.create_task(store.write(held))
    await held.started()
    dropped = asyncio.create_task(store.write(add("g-dropped")))
    kept = asyncio.create_task(store.write(add("g-kept")))
    await asyncio.sleep(0)
    dropped.cancel()
    held.release.set()
    await holding
    assert await kept == "g-kept"
    assert dropped.cancelled()
    assert stored(path) == ["g-kept"]
