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
from sqlalchemy import Connection, create_engine, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from bot import sqlite_worker
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


async def test_a_lone_transaction_that_raises_keeps_nothing_and_the_next_commits(
    store: Store, path: Path
) -> None:
    def refuse(conn: Connection) -> None:
        raise ValueError("this one fails")

    with pytest.raises(ValueError, match="this one fails"):
        await store.write(add("g-alone", then=refuse))
    assert stored(path) == []
    assert await store.write(add("g-next")) == "g-next"
    assert stored(path) == ["g-next"]


def traced(conn: Connection, seen: list[str]) -> None:
    """From here on, every statement the driver runs on this connection is appended to `seen`."""
    driver = conn.connection.dbapi_connection
    assert driver is not None
    driver.set_trace_callback(seen.append)  # type: ignore[attr-defined]


async def test_a_transaction_alone_runs_without_a_savepoint_and_one_of_a_group_in_its_own(
    store: Store, path: Path
) -> None:
    seen: list[str] = []
    await store.write(add("g-alone", then=lambda conn: traced(conn, seen)))
    assert seen == ["COMMIT"]  # nothing between its statements and the commit
    seen.clear()
    tasks = await queued_behind(store, add("g-first"), add("g-second"))  # behind one alone, as a group
    await asyncio.gather(*tasks)
    assert seen.count("SAVEPOINT parley_call") == 2 and seen.count("RELEASE parley_call") == 2
    await store.write(lambda conn: traced(conn, []))
    assert stored(path) == ["g-alone", "g-first", "g-second"]


async def test_groups_that_finish_before_the_loop_takes_the_first_share_its_wake_up(
    store: Store, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop that is behind is woken once for what several groups answered meanwhile, and every caller
    still gets its own outcome."""
    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    wake = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        if isinstance(getattr(callback, "__self__", None), sqlite_worker._Mailbox):
            wakes.append(callback)
        return wake(callback, *args)

    sent = threading.Semaphore(0)
    send = sqlite_worker._Mailbox.send

    def sending(self: Any, outcomes: Any) -> None:
        send(self, outcomes)
        sent.release()

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    monkeypatch.setattr(sqlite_worker._Mailbox, "send", sending)
    first, second = Held(), Held()
    one = asyncio.create_task(store.write(first))
    await first.started()
    two = asyncio.create_task(store.write(add("g-second", then=second)))
    await asyncio.sleep(0)  # queued behind the first: the next group
    # The loop is held here, in this test, while both groups finish and are answered.
    first.release.set()
    assert sent.acquire(timeout=30)
    assert second.running.wait(30)
    second.release.set()
    assert sent.acquire(timeout=30)
    assert len(wakes) == 1
    await one
    assert await two == "g-second"
    assert stored(path) == ["g-second"]


def size(path: Path) -> int:
    return path.stat().st_size


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition`, which another thread makes true (10 s at most)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never happened")


def fill(conn: Connection) -> None:
    """About 2 MB written: under the 1,000 pages past which a commit would checkpoint by itself."""
    conn.execute(text("CREATE TABLE IF NOT EXISTS filler (x TEXT)"))
    conn.execute(
        text("INSERT INTO filler (x) VALUES (:x)"), [{"x": f"{i:04d}" + "x" * 1000} for i in range(2000)]
    )


async def test_the_writes_are_checkpointed_into_the_database_file_by_a_thread_of_their_own(
    store: Store, path: Path
) -> None:
    names = [thread.name for thread in threading.enumerate()]
    assert "parley-sqlite-writer-checkpoints" in names
    pages = await store.write(lambda conn: conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar())
    assert pages == sqlite_worker.WRITER_CHECKPOINT_PAGES  # the writer leaves them to that thread
    before = size(path)
    await store.write(fill)
    await until(lambda: size(path) > before + 1_000_000)  # copied from the log into the file
    with sqlite3.connect(path) as outside:
        assert outside.execute("SELECT count(*) FROM filler").fetchone() == (2000,)


async def test_closing_the_store_ends_the_checkpoint_thread(path: Path) -> None:
    opened = await Store.open(f"sqlite+aiosqlite:///{path}")
    await opened.write(add("g-one"))
    await opened.close()
    assert not [thread for thread in threading.enumerate() if thread.name.endswith("-checkpoints")]
    assert stored(path) == ["g-one"]


async def test_a_database_in_memory_has_no_checkpoint_thread() -> None:
    opened = await Store.open("sqlite+aiosqlite:///:memory:")
    try:
        await opened.write(add("g-one"))
        assert not [thread for thread in threading.enumerate() if thread.name.endswith("-checkpoints")]
    finally:
        await opened.close()


async def test_a_checkpoint_that_fails_is_logged_and_made_again_after_the_next_write(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    attempts: list[str] = []
    connect = engine.raw_connection

    def failing_once() -> Any:
        if not threading.current_thread().name.endswith("-checkpoints"):
            return connect()  # the writer's own
        attempts.append("connect")
        if len(attempts) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return connect()

    engine.raw_connection = failing_once  # type: ignore[method-assign]
    worker = sqlite_worker.SQLiteWorker(engine, "test-writer", "BEGIN IMMEDIATE", checkpoints=True)
    try:
        before = size(path)
        await worker.run(fill)
        await until(lambda: "a WAL checkpoint failed" in caplog.text)
        assert len(attempts) == 1
        assert size(path) < before + 1_000_000  # nothing copied yet
        await worker.run(lambda conn: conn.execute(text("INSERT INTO filler (x) VALUES ('again')")))
        await until(lambda: size(path) > before + 1_000_000)
        assert len(attempts) == 2
    finally:
        await worker.close()
        engine.dispose()
