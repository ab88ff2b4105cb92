"""Request budgets shared by instances through PostgreSQL: slots taken by the database's clock, never more
than a budget's capacity in a window whichever instance takes them, and pacing that goes on alone when the
database fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.models import RenderBudget
from bot.rate_slots import SharedSlots
from bot.store import Store
from bot.streaming import LATENCY_MARGIN, Clock, Pacer, SystemClock
from tests.support.asking import until
from tests.support.clock import FakeClock

on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[list[Store]]:
    """Three instances' stores on one database."""
    opened = [await Store.open(database_url) for _ in range(3)]
    yield opened
    for store in opened:
        await store.close()


@on_postgres
async def test_instances_taking_one_budget_at_once_never_pass_its_capacity(stores: list[Store]) -> None:
    shared = [SharedSlots(store) for store in stores]
    takes = await asyncio.gather(
        *(shared[n % 3].take("slack:T1:chat.startStream", 5, 30.0) for n in range(30))
    )
    granted = [taken for taken in takes if taken is not None and taken.slot is not None]
    assert len(granted) == 5
    assert sorted(taken.slot for taken in granted) == [0, 1, 2, 3, 4]
    refused = await shared[0].take("slack:T1:chat.startStream", 5, 30.0)
    assert refused is not None and refused.slot is None
    assert len(refused.ages) == 5 and all(0 <= age < 30 for age in refused.ages)
    # Another budget is a budget of its own.
    other = await shared[1].take("slack:T1:chat.update", 5, 30.0)
    assert other is not None and other.slot is not None

    # A slot given back is free again; an edit that must leave one free slot to others waits for two.
    await shared[1].give_back("slack:T1:chat.startStream", granted[0])
    edit = await shared[2].take("slack:T1:chat.startStream", 5, 30.0, keep=1)
    assert edit is not None and edit.slot is None
    first = await shared[2].take("slack:T1:chat.startStream", 5, 30.0)
    assert first is not None and first.slot == granted[0].slot
    assert len(first.ages) == 5


@on_postgres
async def test_a_slot_is_free_again_once_a_window_has_passed_by_the_databases_clock(
    stores: list[Store],
) -> None:
    shared = SharedSlots(stores[0])
    taken = await shared.take("discord:1", 1, 0.2)
    assert taken is not None and taken.slot == 0
    refused = await shared.take("discord:1", 1, 0.2)
    assert refused is not None and refused.slot is None
    (age,) = refused.ages
    assert 0 <= age < 0.2

    await stores[0].read(lambda conn: conn.execute(text("SELECT pg_sleep(0.25)")))  # by the database's clock
    again = await shared.take("discord:1", 1, 0.2)
    assert again is not None and again.slot == 0 and again.used_at > taken.used_at


class TimedSurface:
    """Records when each render reached it, by one clock for every instance in the test."""

    def __init__(self, budget: RenderBudget, renders: list[float], clock: Clock | None = None) -> None:
        self.budget = budget
        self.renders = renders
        self._clock = clock or SystemClock()

    async def start(self) -> None:
        return None

    async def render(self, text: str, *, final: bool) -> int:
        self.renders.append(self._clock.now())
        return 1


BUDGET = RenderBudget(min_interval=0.0, bucket="discord:42", capacity=3, window=1.0)


@on_postgres
async def test_three_instances_pacers_share_one_channels_budget(stores: list[Store]) -> None:
    """Nine replies over three instances' pacers, one channel's budget of 3 a second: no second holds
    more than 3 renders (each pacer alone would allow 3 of its own)."""
    renders: list[float] = []
    pacers = [Pacer(SystemClock(), SharedSlots(store)) for store in stores]
    replies = [pacers[n % 3].renderer(TimedSurface(BUDGET, renders)) for n in range(9)]
    await asyncio.gather(*(reply.finish(f"answer {n}") for n, reply in enumerate(replies)))
    assert len(renders) == 9
    renders.sort()
    # Slots are a window and a margin apart by the database's clock; a render reaches the surface a
    # little after its slot was taken, by however long this loaded machine takes to get there.
    assert all(renders[n + 3] - renders[n] >= BUDGET.window - LATENCY_MARGIN for n in range(len(renders) - 3))


@on_postgres
async def test_a_database_error_leaves_pacing_to_the_instance_with_a_warning(
    stores: list[Store], caplog: pytest.LogCaptureFixture
) -> None:
    def drop(conn: Connection) -> None:
        conn.execute(text("DROP TABLE rate_slots"))

    await stores[0].write(drop)
    renders: list[float] = []
    # The pacer's own clock, which the test moves: how long the failing database takes to answer on a
    # loaded machine is no part of the pacing.
    clock = FakeClock()
    pacer = Pacer(clock, SharedSlots(stores[0]))
    with caplog.at_level(logging.WARNING, logger="bot.rate_slots"):
        finishing = [
            asyncio.ensure_future(pacer.renderer(TimedSurface(BUDGET, renders, clock)).finish("hi"))
            for _ in range(4)
        ]
        await until(lambda: len(renders) == 3 and clock.sleepers == 1, "three renders, the fourth waiting")
        await clock.advance(BUDGET.window + LATENCY_MARGIN)
        await asyncio.gather(*finishing)
    assert len(renders) == 4  # every reply was shown, paced by this instance's own bucket
    assert renders[3] - renders[0] >= 1.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "shared rate budgets unavailable" in warnings[0]


@on_postgres
async def test_a_budget_unused_for_a_day_is_forgotten_and_comes_back_when_used(stores: list[Store]) -> None:
    shared = SharedSlots(stores[0])
    for key in ("slack:T1:chat.postMessage:C1", "slack:T1:chat.postMessage:C2"):
        assert (await shared.take(key, 1, 1.0)) is not None

    def yesterday(conn: Connection) -> None:
        conn.execute(
            text("UPDATE rate_slots SET used_at = used_at - 90000 WHERE key = 'slack:T1:chat.postMessage:C1'")
        )

    await stores[0].write(yesterday)
    assert await shared.forget_idle() == 1

    def keys(conn: Connection) -> list[str]:
        return list(conn.execute(text("SELECT key FROM rate_slots ORDER BY key")).scalars())

    assert await stores[0].read(keys) == ["slack:T1:chat.postMessage:C2"]
    again = await shared.take("slack:T1:chat.postMessage:C1", 1, 1.0)
    assert again is not None and again.slot == 0


@on_postgres
async def test_a_database_that_does_not_answer_in_time_leaves_pacing_to_the_instance(
    stores: list[Store], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    renders: list[float] = []
    pacer = Pacer(SystemClock(), SharedSlots(stores[0]))
    other = create_async_engine(database_url)  # another instance, holding the table
    try:
        async with other.connect() as holder:
            await holder.execute(text("LOCK TABLE rate_slots IN ACCESS EXCLUSIVE MODE"))
            with caplog.at_level(logging.WARNING, logger="bot.rate_slots"):
                await pacer.renderer(TimedSurface(BUDGET, renders)).finish("hi")
            await holder.rollback()
    finally:
        await other.dispose()
    assert len(renders) == 1
    assert ["TimeoutError" in r.getMessage() for r in caplog.records] == [True]
