"""PostgreSQL's connection pool: far more transactions than it has connections wait their turn, in the
order they came, for as long as it takes, and none fails (SQLAlchemy's own pool failed them after
30 s: "QueuePool limit … reached"). The advisory locks live on connections of their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, event, insert, select, text
from sqlalchemy.engine import make_url

from bot.accounting import Ledger
from bot.models import Author, ConversationKey, Message
from bot.providers.base import Usage
from bot.schema import inbox, meta, turns, usage
from bot.store import AssistantRecord, Store
from tests.support.asking import ask

on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
HELD = 7_141_414  # an advisory lock the test holds to keep the pool's connections busy


@pytest.fixture
async def outside(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the same database, beside the store's."""
    url = make_url(database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    yield connection
    await connection.close()


async def connections_of_others(outside: asyncpg.Connection) -> int:
    return int(
        await outside.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    )


async def until_waiting_on_the_lock(outside: asyncpg.Connection, count: int) -> None:
    """Wait until `count` sessions wait for the advisory lock the test holds (a sentinel, not a sleep)."""
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1"
    while await outside.fetchval(query, HELD) < count:
        await asyncio.sleep(0.01)


def blocked(conn: Connection) -> None:
    """A transaction that holds its connection until the test lets the lock go."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": HELD})


@on_postgres
async def test_transactions_beyond_the_pool_wait_their_turn_in_order_and_none_fails(
    database_url: str, outside: asyncpg.Connection
) -> None:
    store = await Store.open(database_url, pool_size=1)
    try:
        await outside.execute("SELECT pg_advisory_lock($1)", HELD)
        holder = asyncio.create_task(store.write(blocked))
        await until_waiting_on_the_lock(outside, 1)  # the pool's one connection is taken

        order: list[int] = []

        def numbered(index: int) -> Callable[[Connection], None]:
            def work(conn: Connection) -> None:
                conn.execute(insert(meta).values(name=f"n{index:02d}", value="", updated_at=0.0))
                order.append(index)

            return work

        def counted(conn: Connection) -> int:
            return len(conn.execute(select(meta.c.name).where(meta.c.name.like("n%"))).all())

        writes: list[asyncio.Task[Any]] = []
        for index in range(40):
            writes.append(asyncio.create_task(store.write(numbered(index))))
            if index % 10 == 9:  # reads wait in the same line
                writes.append(asyncio.create_task(store.read(counted)))
        await asyncio.sleep(0)  # each task runs up to its wait for the pool, in the order made
        assert not any(task.done() for task in writes) and order == []
        assert await connections_of_others(outside) == 1  # the store never opened a second one

        await outside.execute("SELECT pg_advisory_unlock($1)", HELD)
        results = await asyncio.gather(holder, *writes)
        assert order == list(range(40))  # served in the order they asked
        assert [r for r in results if r is not None] == [10, 20, 30, 40]  # each read after its writes
    finally:
        await store.close()


@on_postgres
async def test_far_more_replies_than_the_pool_has_connections_all_complete(
    make_engine: Callable[..., Any], outside: asyncpg.Connection
) -> None:
    """Replies through the engine, the gate's advisory locks included, on a pool of two connections."""
    engine = await make_engine(database_pool_size=2)
    people = [Author(f"u{n}", f"Person {n}") for n in range(6)]
    asked = [
        ask(engine, f"question {n}", ConversationKey("test", f"c{n % 5}"), people[n % 6]) for n in range(40)
    ]
    answers = await asyncio.gather(*asked)
    assert answers == [f"echo: Person {n % 6}: question {n}" for n in range(40)]
    assert await engine.store.pending("test") == []
    # Two pooled connections, and the one the conversation locks take (outside the pool).
    assert await connections_of_others(outside) <= 3
    assert len(await engine.store.history("test:c0", 100)) == 16  # 8 questions and their 8 answers


@on_postgres
async def test_a_reply_writes_its_message_row_and_final_record_in_one_statement_each(
    database_url: str,
) -> None:
    """Each a statement of its own outside a transaction (no BEGIN and COMMIT: one round trip, where
    the accept took four and the final record six), and what each wrote is all there: a question and
    its reply with usage rows, a command (no turn), and a reply that ended before it showed (its turn
    written by the final record)."""
    store = await Store.open(database_url)
    sent: list[tuple[str, str | None]] = []

    def executed(conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        sent.append((statement.split()[0], conn.get_execution_options().get("isolation_level")))

    def asked(text: str, message_id: str) -> Message:
        return Message(ConversationKey("test", "c"), Author("u1", "Ada"), text, id=message_id, server_id="S")

    assert store._pool is not None
    event.listen(store._pool.sync_engine, "before_cursor_execute", executed)
    question = asked("hello", "m1")
    entry = await store.accept(question, None, "hello", 2)
    assert entry is not None and entry.turn_id is not None
    assert await store.accept(question, None, "hello", 2) is None  # a redelivery stores nothing
    turn_id = await store.start_reply(
        "test:c", entry.turn_id, "u1", AssistantRecord("he", "m", "streaming"), 1
    )
    ledger = Ledger()
    ledger.add("openrouter/x", Usage(prompt_tokens=5, completion_tokens=7, cost=0.25))
    ledger.add("openrouter/y", Usage(prompt_tokens=1, completion_tokens=2))
    rows = ledger.rows(question, entry.id, 1.0)
    record = AssistantRecord("hello there", "openrouter/x", "ok", 5, 7, 0.25, 40)
    await store.finish_reply(entry.id, "test:c", turn_id, entry.turn_id, "u1", record, 3, rows)
    command = await store.accept(asked("/model", "m2"), None, "", 0)
    assert command is not None and command.turn_id is None
    unseen = await store.accept(asked("again", "m3"), None, "again", 1)
    assert unseen is not None and unseen.turn_id is not None
    failed = AssistantRecord("It failed.", "openrouter/x", "error")
    await store.finish_reply(unseen.id, "test:c", None, unseen.turn_id, "u1", failed, 2)
    event.remove(store._pool.sync_engine, "before_cursor_execute", executed)
    kinds = ["WITH", "WITH", "WITH", "WITH", "INSERT", "WITH", "WITH"]  # the row: numbered, then written
    assert sent == [(kind, "AUTOCOMMIT") for kind in kinds]

    def stored(conn: Connection) -> tuple[Any, ...]:
        turns_stored = conn.execute(
            select(turns.c.id, turns.c.role, turns.c.content, turns.c.outcome, turns.c.answers).order_by(
                turns.c.id
            )
        ).all()
        inbox_rows = conn.execute(
            select(inbox.c.id, inbox.c.state, inbox.c.turn_id).order_by(inbox.c.id)
        ).all()
        spent = conn.execute(
            select(usage.c.name, usage.c.inbox_id, usage.c.cost).order_by(usage.c.name)
        ).all()
        return turns_stored, inbox_rows, spent

    turns_stored, inbox_rows, spent = await store.read(stored)
    assert [tuple(row)[1:] for row in turns_stored] == [
        ("user", "hello", None, None),
        ("assistant", "hello there", "ok", entry.turn_id),
        ("user", "again", None, None),
        ("assistant", "It failed.", "error", unseen.turn_id),
    ]
    assert [row.id for row in turns_stored][:3] == [entry.turn_id, turn_id, unseen.turn_id]
    assert [tuple(row) for row in inbox_rows] == [
        (entry.id, "done", entry.turn_id),
        (command.id, "pending", None),
        (unseen.id, "done", unseen.turn_id),
    ]
    assert [tuple(row) for row in spent] == [
        ("openrouter/x", entry.id, 0.25),
        ("openrouter/y", entry.id, None),
    ]
    await store.close()


@on_postgres
async def test_a_final_record_is_compiled_once_whatever_its_usage_rows(database_url: str) -> None:
    """Its usage rows come as one array per column, so the statement is one for any number of rows
    (a multi-row VALUES is compiled again for every reply: SQLAlchemy never caches one)."""
    store = await Store.open(database_url)
    answers: list[tuple[int, int]] = []

    def executed(conn: Any, _cursor: Any, statement: str, _p: Any, context: Any, _many: bool) -> None:
        if statement.startswith("WITH reply"):
            answers.append((context.cache_hit, context.dialect.CACHE_HIT))

    assert store._pool is not None
    try:
        for n in range(4):
            question = Message(
                ConversationKey("test", "c"), Author("u1", "Ada"), "hi", id=f"m{n}", server_id="S"
            )
            entry = await store.accept(question, None, "hi", 1)
            assert entry is not None
            turn_id = await store.start_reply(
                "test:c", entry.turn_id, "u1", AssistantRecord("", "m", "streaming"), 0
            )
            ledger = Ledger()
            for model in range(n):
                ledger.add(f"openrouter/m{model}", Usage(prompt_tokens=model, completion_tokens=1))
            if n == 1:
                event.listen(store._pool.sync_engine, "after_cursor_execute", executed)
            final = AssistantRecord("hello", "openrouter/m0", "ok")
            await store.finish_reply(
                entry.id,
                "test:c",
                turn_id,
                entry.turn_id,
                "u1",
                final,
                1,
                ledger.rows(question, entry.id, 1.0),
            )
        event.remove(store._pool.sync_engine, "after_cursor_execute", executed)
        assert [hit == cached for hit, cached in answers] == [True, True, True]
        rows = await store.read(
            lambda conn: conn.execute(select(usage.c.inbox_id, usage.c.name, usage.c.prompt_tokens)).all()
        )
        assert sorted(tuple(row)[1:] for row in rows) == sorted(
            (f"openrouter/m{model}", model) for n in range(4) for model in range(n)
        )
        assert len({row.inbox_id for row in rows}) == 3  # the reply with none recorded none
    finally:
        await store.close()


@on_postgres
async def test_replies_rows_asked_for_together_are_written_in_one_statement(database_url: str) -> None:
    """A burst of first renders writes its rows in one statement, each reply given its own row's id; a
    batch whose statement fails fails each of its replies, and the next is written."""
    store = await Store.open(database_url)
    sent: list[str] = []

    def executed(conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        sent.append(statement.split()[1])

    assert store._pool is not None
    try:
        entries = []
        for n in range(30):
            question = Message(ConversationKey("test", f"c{n}"), Author("u1", "Ada"), "hi", id=f"m{n}")
            entry = await store.accept(question, None, f"question {n}", 1)
            assert entry is not None
            entries.append(entry)

        def started(n: int) -> Any:
            record = AssistantRecord(f"answer {n}", "m", "streaming")
            return store.start_reply(f"test:c{n}", entries[n].turn_id, "u1", record, 2, {"n": n})

        event.listen(store._pool.sync_engine, "before_cursor_execute", executed)
        ids = await asyncio.gather(*(started(n) for n in range(30)))
        event.remove(store._pool.sync_engine, "before_cursor_execute", executed)
        assert sent == ["numbered"]
        rows = await store.read(
            lambda conn: conn.execute(
                select(
                    turns.c.id, turns.c.conversation, turns.c.content, turns.c.answers, turns.c.reply_refs
                ).where(turns.c.role == "assistant")
            ).all()
        )
        by_id = {row.id: tuple(row)[1:] for row in rows}
        assert [by_id[turn_id] for turn_id in ids] == [
            (f"test:c{n}", f"answer {n}", entries[n].turn_id, f'{{"n": {n}}}') for n in range(30)
        ]
        await store.write(lambda conn: conn.execute(text("ALTER TABLE turns RENAME TO away")))
        failed = await asyncio.gather(*(started(n) for n in range(3)), return_exceptions=True)
        assert [type(error).__name__ for error in failed] == ["ProgrammingError"] * 3
        await store.write(lambda conn: conn.execute(text("ALTER TABLE away RENAME TO turns")))
        assert await started(0) not in ids
    finally:
        await store.close()
