"""Shard leases and IDENTIFY slots (bot/shards.py) on a real database: each store here is an instance of
its own on the test's database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from bot.shards import SLOT_SECONDS, IdentifySlots, Leases
from bot.store import Store

on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first, second = await Store.open(database_url), await Store.open(database_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_on_sqlite_the_one_instance_holds_every_shard(stores: tuple[Store, Store]) -> None:
    leases = Leases(stores[0], "discord", 3)
    assert await leases.take_free() == [0, 1, 2]
    assert await leases.take_free() == [] and await leases.lost() == [] and await leases.surplus() is None


@on_postgres
async def test_leases_spread_over_instances_and_a_dead_ones_go_to_the_living(
    stores: tuple[Store, Store],
) -> None:
    first, second = Leases(stores[0], "discord", 2), Leases(stores[1], "discord", 2)
    assert await first.take_free() == [0, 1]  # alone, it takes them all
    assert await second.take_free() == []  # its share is one, but both are held
    assert await second.surplus() is None
    assert await first.surplus() == 1  # two members now: it holds more than its share
    await first.release(1)
    assert await first.take_free() == []  # at its share: it leaves the shard for the other
    assert await second.take_free() == [1]
    assert await first.surplus() is None and await second.surplus() is None
    # The first dies: the server ends its session, and its lease and its membership go with it.
    assert first._connection is not None
    pid = (await first._connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    terminate = text("SELECT pg_terminate_backend(:pid)").bindparams(pid=pid)
    await stores[1].write(lambda conn: conn.execute(terminate))
    for _ in range(100):  # the server ends the session a moment later
        if won := await second.take_free():
            break
        await asyncio.sleep(0.05)
    assert won == [0] and second.held == {0, 1}
    assert await first.lost() == [0] and first.held == set()  # it finds out at its next look
    await second.close()


@pytest.mark.both_databases
async def test_an_identify_slot_is_one_per_bucket_across_instances(stores: tuple[Store, Store]) -> None:
    first, second = IdentifySlots(stores[0], "discord", 2), IdentifySlots(stores[1], "discord", 2)
    assert await first._take(0) == 0.0
    assert await first._take(1) == 0.0  # another bucket
    if stores[0].shared:  # on PostgreSQL another instance waits too; on SQLite there is none
        assert 0 < await second._take(0) <= SLOT_SECONDS
    assert 0 < await first._take(0) <= SLOT_SECONDS
    assert second.max_concurrency == 2 and IdentifySlots(stores[0], "discord", 0).max_concurrency == 1
