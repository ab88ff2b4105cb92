"""Who waits for whom across instances: a person's messages in the order the inbox accepted them."""

from __future__ import annotations

import asyncio

import pytest

from bot.gate import Gate
from bot.store import Store
from tests.support.asking import ADA, msg

on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


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
        looked = asyncio.Event()
        earlier_pending = store.earlier_pending

        async def watched(conversation: str, author_id: str, inbox_id: int) -> bool:
            pending = await earlier_pending(conversation, author_id, inbox_id)
            looked.set()
            return pending

        store.earlier_pending = watched  # type: ignore[method-assign]
        gate = Gate(store)
        order: list[str] = []

        async def answer(inbox_id: int, text: str) -> None:
            async with gate.turn(first.message.key, ADA.id, inbox_id):
                order.append(text)
                await store.close_inbox(inbox_id)

        later = asyncio.create_task(answer(second.id, "two"))
        await asyncio.wait_for(looked.wait(), 10)  # it has seen the earlier message still unanswered
        await asyncio.wait_for(answer(first.id, "one"), 10)
        await asyncio.wait_for(later, 10)
        assert order == ["one", "two"]
    finally:
        await store.close()
