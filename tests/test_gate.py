"""Who waits for whom across instances: a person's messages in the order the inbox accepted them, and
turns taken on PostgreSQL in batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine as DatabaseEngine

from bot.gate import Gate
from bot.models import Author
from bot.store import Store
from bot.turn_locks import TurnLocks
from tests.support.asking import ADA, msg

on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

HELD_TURNS = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")


def turns_of(store: Store) -> TurnLocks:
    assert store.turns is not None, "turns are shared on PostgreSQL only"
    return store.turns


async def held(store: Store) -> int:
    """Advisory locks granted to anyone, read on a pooled connection (never the turns' own)."""
    return int(await store.read(lambda conn: conn.execute(HELD_TURNS).scalar_one()))


@on_postgres
async def test_a_later_message_that_took_its_turn_first_lets_the_earlier_one_go_first(
    database_url: str,
) -> None:
    """Deliveries reach an instance in any order (Socket Mode spreads them): the later message may
    ask for its turn first, and must wait for the earlier one without keeping it out."""
    store = await Store.open(database_url)
    try:
        first = await store.accept(msg("one", id="1.1"), None, "one", 1)
        second = await store.accept(msg("two", id="1.2"), None, "two", 1)
        assert first is not None and second is not None
        turns = turns_of(store)
        refused = asyncio.Event()
        take = turns.take

        async def watched(conversation: str, author_id: str, inbox_id: int) -> bool:
            taken = await take(conversation, author_id, inbox_id)
            if not taken:
                refused.set()
            return taken

        turns.take = watched  # type: ignore[method-assign]
        gate = Gate(store)
        order: list[str] = []

        async def answer(inbox_id: int, text: str) -> None:
            async with gate.turn(first.message.key, ADA.id, inbox_id):
                order.append(text)
                await store.close_inbox(inbox_id)

        later = asyncio.create_task(answer(second.id, "two"))
        await asyncio.wait_for(refused.wait(), 10)  # it has seen the earlier message still unanswered
        assert await held(store) == 0  # and gave back the lock it had taken to look
        await asyncio.wait_for(answer(first.id, "one"), 10)
        await asyncio.wait_for(later, 10)
        assert order == ["one", "two"]
        assert await held(store) == 0
    finally:
        await store.close()


@contextmanager
def statements_sent() -> Iterator[list[str]]:
    """Every statement any engine sends meanwhile."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(DatabaseEngine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(DatabaseEngine, "before_cursor_execute", record)


@on_postgres
async def test_turns_asked_for_together_go_in_one_statement(database_url: str) -> None:
    """A burst of turns costs a round trip on the lock connection, not one per turn; so do their gives."""
    store = await Store.open(database_url)
    try:
        turns = turns_of(store)
        people = [Author(f"u-{n}", f"person {n}") for n in range(50)]
        accepted = [await store.accept(msg("hi", author=person), None, "hi", 1) for person in people]
        with statements_sent() as sent:
            taken = await asyncio.gather(
                *(turns.take(str(entry.message.key), entry.message.author.id, entry.id) for entry in accepted)
            )
            assert taken == [True] * 50
            assert len([s for s in sent if "pg_try_advisory_lock" in s]) == 1
        assert await held(store) == 50
        with statements_sent() as sent:
            await asyncio.gather(
                *(turns.give(str(entry.message.key), entry.message.author.id) for entry in accepted)
            )
            assert len([s for s in sent if "pg_advisory_unlock" in s]) == 1
        assert await held(store) == 0
    finally:
        await store.close()


@on_postgres
async def test_a_turn_held_on_one_instance_is_refused_on_another_until_given_back(database_url: str) -> None:
    one, two = await Store.open(database_url), await Store.open(database_url)
    try:
        entry = await one.accept(msg("hi"), None, "hi", 1)
        assert entry is not None
        where = str(entry.message.key)
        assert await turns_of(one).take(where, ADA.id, entry.id)
        assert not await turns_of(two).take(where, ADA.id, entry.id)
        await turns_of(one).give(where, ADA.id)
        assert await turns_of(two).take(where, ADA.id, entry.id)
        assert not await turns_of(one).take(where, ADA.id, entry.id)
    finally:
        await one.close()
        await two.close()


@on_postgres
async def test_a_taker_cancelled_while_its_statement_is_out_holds_nothing(database_url: str) -> None:
    """The lock its statement won is given back, so the turn is free for the next one."""
    store = await Store.open(database_url)
    try:
        entry = await store.accept(msg("hi"), None, "hi", 1)
        assert entry is not None
        where = str(entry.message.key)
        taker = asyncio.create_task(turns_of(store).take(where, ADA.id, entry.id))

        def cancel_it(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if "pg_try_advisory_lock" in statement:
                taker.cancel()  # the statement is on its way: its answer comes back to nobody

        event.listen(DatabaseEngine, "before_cursor_execute", cancel_it)
        try:
            with pytest.raises(asyncio.CancelledError):
                await taker
        finally:
            event.remove(DatabaseEngine, "before_cursor_execute", cancel_it)
        assert await turns_of(store).take(where, ADA.id, entry.id)  # after the give-back, in order
        assert await held(store) == 1
        await turns_of(store).give(where, ADA.id)
        assert await held(store) == 0
    finally:
        await store.close()


@on_postgres
async def test_a_lost_lock_connection_refuses_the_turns_in_flight_then_reconnects(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every take in a batch whose connection failed counts as not taken (the connection held nothing
    once it closed); the next take reconnects."""
    store = await Store.open(database_url)
    try:
        entry = await store.accept(msg("hi"), None, "hi", 1)
        assert entry is not None
        where = str(entry.message.key)
        assert await turns_of(store).take(where, ADA.id, entry.id)
        end = text(
            "SELECT pg_terminate_backend(pid) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
        )
        assert await store.write(lambda conn: conn.execute(end).all())
        with caplog.at_level(logging.WARNING, logger="bot.turn_locks"):
            refused = await turns_of(store).take("elsewhere", ADA.id, entry.id)
        assert refused is False
        assert "lost the connection that holds conversation locks" in caplog.text
        assert "SELECT" not in caplog.text  # the reason, not the statement and its parameters
        assert await turns_of(store).take(where, ADA.id, entry.id)  # a new connection; the old turn is free
        assert await held(store) == 1
    finally:
        await store.close()
